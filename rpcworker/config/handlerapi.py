"""What a handler plugin class offers, by the plugin API's rules: the names a caller may
call (a public method of its class: ``def``, ``staticmethod`` or ``classmethod``, never an
instance attribute, a property or ``object``'s), and the oslo notification priorities it
takes (a public method named after one). ``plugins`` lists and checks handlers by these
rules, ``policy.dispatcher`` finds the method to call by them. Pure.
"""

from __future__ import annotations

import types
from typing import Any

from rpcworker.config.bindingconf import PRIORITIES

#: handler attributes that are never RPC methods, besides the "_" names
_NOT_RPC = frozenset({"handle_message", "target"})
#: what a class body defines as a method (``def``, ``staticmethod``, ``classmethod``)
_METHOD_TYPES = (types.FunctionType, staticmethod, classmethod)


def is_rpc_name(name: str) -> bool:
    """Whether ``name`` may be called remotely at all: an identifier, not ``_private``,
    not ``handle_message`` or ``target``."""
    return name.isidentifier() and not name.startswith("_") and name not in _NOT_RPC


def has_getattr_hook(cls: type) -> bool:
    """Whether ``cls`` (or a non-builtin base) defines ``__getattr__``: it may answer
    any name, so its methods cannot be listed, and its answers may change."""
    return any("__getattr__" in vars(k) for k in cls.__mro__ if k.__module__ != "builtins")


def has_method(cls: type, name: str) -> bool:
    """Whether ``name`` is a public method of ``cls`` by the rule ``find_method`` keeps."""
    return is_rpc_name(name) and definition(cls, name)[1] is not None


def rpc_methods(cls: type) -> tuple[str, ...] | None:
    """The names ``find_method`` would call on an instance of ``cls``, sorted; None when
    a ``__getattr__`` of its own may answer other names too."""
    if has_getattr_hook(cls):
        return None
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__ != "builtins":
            names.update(vars(klass))
    return tuple(sorted(n for n in names if has_method(cls, n)))


def definition(cls: type, name: str) -> tuple[bool, Any]:
    """(whether a class of ``cls``'s MRO defines ``name``, the definition used when it
    is a ``def``, ``staticmethod`` or ``classmethod`` of a class that is not a builtin,
    else None)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            raw = vars(klass)[name]
            if klass.__module__ == "builtins" or not isinstance(raw, _METHOD_TYPES):
                return True, None
            return True, raw
    return False, None


def priorities_of(handler: Any) -> tuple[str, ...]:
    """The priorities ``handler`` (an instance or a class) has a method for, in oslo's
    order."""
    cls = handler if isinstance(handler, type) else type(handler)
    return tuple(p for p in PRIORITIES if has_method(cls, p))
