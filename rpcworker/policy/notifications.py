"""Notification bindings (``type = notification``): which priorities a handler takes, and
which notifications its filters let through, as oslo.messaging's notification listener
decides (``notify/dispatcher.py``, ``notify/filter.py``).

A handler takes a priority when its class defines a public method of that name
(``info(self, ctxt, publisher_id, event_type, payload, metadata)``); a binding consumes
the priorities it lists, or by default all those its handler takes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from rpcworker.config.bindingconf import PRIORITIES, Binding, check_queues_unique
from rpcworker.errors import ConfigError
from rpcworker.policy import dispatcher
from rpcworker.wire.decoding import Notification


def priorities_of(handler: Any) -> tuple[str, ...]:
    """The priorities ``handler`` (an instance or a class) has a method for, in oslo's
    order."""
    cls = handler if isinstance(handler, type) else type(handler)
    return tuple(p for p in PRIORITIES if dispatcher.has_method(cls, p))


def resolve(bindings: Iterable[Binding], handlers: dict[str, Any]) -> list[Binding]:
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
    has = priorities_of(handler)
    if not b.priorities:
        if not has:
            raise ConfigError(b.group, "handler", f"handler {b.handler!r} has no method for "
                              f"any notification priority ({', '.join(PRIORITIES)}): a "
                              f"notification binding needs at least one")
        return dataclasses.replace(b, priorities=has)
    missing = [p for p in b.priorities if p not in has]
    if missing:
        raise ConfigError(b.group, "priorities", f"handler {b.handler!r} has no "
                          f"{', '.join(missing)}() method (it has: {', '.join(has) or 'none'})")
    return b


def matches(binding: Binding, notification: Notification) -> bool:
    """Whether the binding's filters let ``notification`` through (``re.match``, as
    oslo's NotificationFilter; a filter not set lets everything through)."""
    for pattern, value in ((binding.filter_event_type, notification.event_type),
                           (binding.filter_publisher_id, notification.publisher_id)):
        if pattern is not None and (not isinstance(value, str)
                                    or re.match(pattern, value) is None):
            return False
    return True
