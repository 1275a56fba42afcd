"""Request -> the handler method, and the call. Decides nothing about the message.

``unknown(handler, request)`` tells on receipt whether a request names a method and
version the handler serves (the policy refuses it when not); ``call()`` runs it in a
handler thread and returns what the method returned or raises what it raised (the
policy turns either into an Outcome). What is callable remotely is the plugin API's rule
(``config.handlerapi``).
"""

from __future__ import annotations

import types
from typing import Any

from rpcworker.config import handlerapi
from rpcworker.errors import DispatchError, NoHandleMessage, NoSuchMethod, UnsupportedVersion
from rpcworker.wire import decoding
from rpcworker.wire.message import Message

#: (handler, method, namespace, version) that find_method accepted -> the bound method:
#: the loop thread checks every request and the handler thread calls it, and the class
#: lookup costs a few microseconds. Only successes are kept (a flood of unknown names
#: cannot fill it), and it is bounded. A kept bound method holds its handler, so the
#: handler's id() is never reused while its entry lives.
_FOUND: dict[tuple[Any, ...], Any] = {}
_FOUND_MAX = 4096


def unknown(handler: Any, request: decoding.Request) -> DispatchError | None:
    """Why ``request`` names no method of ``handler`` (no such method, or a namespace or
    version the handler's target does not serve); None: it does, or it is an event."""
    if request.method is None:
        return None
    key = (id(handler), type(handler), request.method, request.namespace, request.version)
    if key in _FOUND:
        return None
    try:
        func = find_method(handler, request)
    except (NoSuchMethod, UnsupportedVersion) as exc:
        return exc
    if not handlerapi.has_getattr_hook(type(handler)):  # its answers may change: never cached
        if len(_FOUND) >= _FOUND_MAX:
            _FOUND.clear()
        _FOUND[key] = func
    return None


def call(handler: Any, request: decoding.Request) -> Any:
    """Run ``request`` on ``handler`` (a handler thread): an RPC request as
    ``method(ctxt, **args)``, a notification as ``priority(ctxt, publisher_id, event_type,
    payload, metadata)``, an event as ``handle_message(message)``. Returns what it
    returns (the coroutine of an ``async def`` method, which ``inflight.run`` awaits),
    raises what it raises (``NoHandleMessage`` for an event the handler cannot take)."""
    if request.method is not None:
        key = (id(handler), type(handler), request.method, request.namespace, request.version)
        func = _FOUND.get(key) or find_method(handler, request)
        return func(dict(request.context), **request.args)
    n = request.notification
    if n is not None:  # the method named after the priority (policy checked it exists)
        method = _public_method(handler, n.priority)
        if method is None:
            raise NoSuchMethod(n.priority)
        return method(dict(n.context), n.publisher_id, n.event_type, n.payload, dict(n.metadata))
    on_message = getattr(handler, "handle_message", None)
    if on_message is None:
        raise NoHandleMessage("has no handle_message() for events")
    return on_message(Message.from_request(request))


def find_method(handler: Any, request: decoding.Request) -> Any:
    """The handler method for ``request``, by oslo.messaging's rules; raises on refusal.

    Only a public method of the handler's class is ever returned (see ``_public_method``):
    the name comes from the message, so it is never looked up with getattr on the handler.
    """
    method = request.method or ""
    target = getattr(handler, "target", None)
    namespace = getattr(target, "namespace", None)
    accepted = [namespace] + list(getattr(target, "legacy_namespaces", None) or [])
    handler_version = getattr(target, "version", None) or "1.0"
    if request.namespace not in accepted or not version_is_compatible(
        handler_version, request.version
    ):
        raise UnsupportedVersion(request.version, method)
    if not handlerapi.is_rpc_name(method):
        raise NoSuchMethod(method)
    func = _public_method(handler, method)
    if func is None:
        raise NoSuchMethod(method)
    return func


def _public_method(handler: Any, name: str) -> Any:
    """``name`` bound to ``handler`` when a class body of its type (or of a base class that
    is not a builtin such as ``object``) defines it with ``def``, ``staticmethod`` or
    ``classmethod``; None for anything else.

    It is looked up in the classes' own namespaces, so an instance attribute (a stored
    ``conf`` is callable: calling it re-reads configuration files), a property, a nested
    class, a callable class attribute and ``object``'s attributes are never called. A
    class with its own ``__getattr__`` (like the ``log`` handler) is asked for the names
    that neither its classes nor the instance define.
    """
    cls = type(handler)
    defined, raw = handlerapi.definition(cls, name)
    if not defined:
        return _from_getattr_hook(handler, cls, name)
    return None if raw is None else raw.__get__(handler, cls)


def _from_getattr_hook(handler: Any, cls: type, name: str) -> Any:
    """What the class's own ``__getattr__`` answers for ``name`` (callables only)."""
    hook = next((vars(k)["__getattr__"] for k in cls.__mro__ if "__getattr__" in vars(k)), None)
    if not isinstance(hook, types.FunctionType):
        return None
    try:
        own = object.__getattribute__(handler, "__dict__")
    except AttributeError:
        own = {}
    if name in own:  # an instance attribute: data, never a method
        return None
    try:
        func = hook(handler, name)
    except AttributeError:
        return None
    return func if callable(func) else None


def version_is_compatible(implemented: str, requested: str) -> bool:
    """oslo.messaging's ``_utils.version_is_compatible``; malformed versions never match."""
    try:
        imp = [int(p) for p in implemented.split(".")]
        req = [int(p) for p in requested.split(".")]
    except ValueError:
        return False
    if len(imp) < 2 or len(req) < 2:
        return False
    imp_rev = imp[2] if len(imp) > 2 else 0
    req_rev = req[2] if len(req) > 2 else 0
    if req[0] != imp[0]:
        return False
    if req[1] > imp[1]:
        return False
    if req[1] == imp[1] and req_rev > imp_rev:
        return False
    return True
