"""Load handler plugins with stevedore, failing fast (exit 2) on any problem; list them
(``--list-handlers``); resolve what a binding leaves to its handler (a notification
binding's priorities)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
from collections.abc import Iterable
from typing import Any

from oslo_config import cfg
from stevedore import NamedExtensionManager

from rpcworker.config import handlerapi
from rpcworker.config.bindingconf import PRIORITIES, Binding, check_queues_unique
from rpcworker.errors import ConfigError, PluginError

NAMESPACE = "rpcworker.handlers"


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    name: str
    #: the entry point's value, ``module:attr``
    target: str
    summary: str
    #: the RPC namespace and version of the handler's ``target`` (None, "1.0" without one)
    namespace: str | None = None
    version: str = "1.0"
    #: public RPC methods (handlerapi.rpc_methods); None: not known without an
    #: instance (a factory function, or a ``__getattr__`` that answers any name)
    methods: tuple[str, ...] | None = None
    #: the notification priorities it has a method for (handlerapi.priorities_of)
    priorities: tuple[str, ...] = ()


def load(conf: cfg.ConfigOpts, bindings: Iterable[Binding]) -> dict[str, Any]:
    """Instantiate each named handler once, as ``factory(conf)``: ``{name: handler}``.

    Raises PluginError naming the binding when a plugin is missing, fails to
    import, or raises in its constructor.
    """
    users: dict[str, list[str]] = {}
    for b in bindings:
        users.setdefault(b.handler, []).append(b.name)
    if not users:
        return {}

    def where(name: str) -> str:
        return ", ".join(f"[binding:{n}]" for n in users.get(name, [])) or "handler"

    def on_missing(names: Iterable[str]) -> None:
        name = sorted(names)[0]
        installed = ", ".join(sorted(e.name for e in _all_entry_points())) or "none"
        raise PluginError(
            f"{where(name)} handler: no plugin {name!r} in entry point "
            f"group {NAMESPACE} (installed: {installed})"
        )

    def on_failure(manager: Any, entrypoint: Any, exc: BaseException) -> None:
        raise PluginError(
            f"{where(entrypoint.name)} handler: plugin {entrypoint.name!r} "
            f"({entrypoint.value}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    manager = NamedExtensionManager(
        NAMESPACE,
        names=sorted(users),
        invoke_on_load=True,
        invoke_args=(conf,),
        on_load_failure_callback=on_failure,
        on_missing_entrypoints_callback=on_missing,
        name_order=True,
    )
    return {ext.name: ext.obj for ext in manager.extensions}


def _all_entry_points() -> list[importlib.metadata.EntryPoint]:
    unique: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=NAMESPACE):
        unique.setdefault(ep.name, ep)
    return list(unique.values())


def describe(name: str, value: str, factory: Any) -> PluginInfo:
    """What ``--list-handlers`` shows of one loaded entry point."""
    doc = inspect.getdoc(factory) or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else ""
    target = getattr(factory, "target", None)
    namespace = getattr(target, "namespace", None)
    version = getattr(target, "version", None) or "1.0"
    methods = handlerapi.rpc_methods(factory) if isinstance(factory, type) else None
    priorities = handlerapi.priorities_of(factory) if isinstance(factory, type) else ()
    return PluginInfo(
        name,
        value,
        summary,
        None if namespace is None else str(namespace),
        str(version),
        methods,
        priorities,
    )


def list_handlers() -> list[PluginInfo]:
    """Installed handler plugins: entry point name, target, first docstring line, RPC
    namespace/version and methods."""
    result = []
    for ep in sorted(_all_entry_points(), key=lambda e: e.name):
        try:
            result.append(describe(ep.name, ep.value, ep.load()))
        except Exception as exc:  # a broken plugin is listed, not fatal here
            result.append(
                PluginInfo(ep.name, ep.value, f"(cannot be imported: {type(exc).__name__}: {exc})")
            )
    return result


def resolve_priorities(bindings: Iterable[Binding], handlers: dict[str, Any]) -> list[Binding]:
    """``bindings`` with each notification binding's priorities resolved against its
    handler. Raises ConfigError naming the option."""
    out = []
    for b in bindings:
        if b.type == "notification":
            b = _resolved(b, handlers[b.handler])
        out.append(b)
    check_queues_unique(out)  # again: the default priorities name queues only now
    return out


def _resolved(b: Binding, handler: Any) -> Binding:
    has = handlerapi.priorities_of(handler)
    if not b.priorities:
        if not has:
            raise ConfigError(
                b.group,
                "handler",
                f"handler {b.handler!r} has no method for "
                f"any notification priority ({', '.join(PRIORITIES)}): a "
                f"notification binding needs at least one",
            )
        return dataclasses.replace(b, priorities=has)
    missing = [p for p in b.priorities if p not in has]
    if missing:
        raise ConfigError(
            b.group,
            "priorities",
            f"handler {b.handler!r} has no "
            f"{', '.join(missing)}() method (it has: {', '.join(has) or 'none'})",
        )
    return b
