"""Which queues are the parking lots of the configured bindings.

A binding's parking lot is its ``dead_letter_queue``; with only a
``dead_letter_exchange``, the queues bound to that exchange with a key that takes the
binding's dead letters (read from the RabbitMQ management API: AMQP cannot list
bindings). Bindings that share one lot are read together; ``--binding`` picks one
binding's lot and, in a shared lot, that binding's messages (``x-rpcworker-binding``).
``--queue`` names a lot directly (any queue of parked messages, also one filled by a
queue's own ``x-dead-letter-exchange``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from rpcworker.client.exits import EXIT_BROKER, EXIT_USAGE, ClientError
from rpcworker.config.bindingconf import Binding


@dataclasses.dataclass(frozen=True)
class Lot:
    """One parking-lot queue and the bindings that park there."""

    queue: str
    bindings: tuple[str, ...]
    #: read as a quorum queue (rotated, so that reading never raises x-delivery-count)
    quorum: bool | None = None  # None: asked of the broker


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` one word, ``#`` zero or more."""
    words = [r"[^.]+" if w == "*" else (r"#" if w == "#" else re.escape(w))
             for w in pattern.split(".")]
    regex = r"\.".join(words)
    regex = regex.replace(r"\.#", r"(?:\..*)?").replace(r"#\.", r"(?:.*\.)?").replace("#", ".*")
    return re.fullmatch(regex, key) is not None


def _exchange_lots(binding: Binding, mgmt: Any, vhost: str) -> list[str]:
    """The queues that ``binding``'s dead_letter_exchange routes its dead letters to."""
    exchange = str(binding.dead_letter_exchange)
    path = f"/api/exchanges/{quote(vhost, safe='')}/{quote(exchange, safe='')}/bindings/source"
    rows = mgmt.get(path) or []
    key = binding.dead_letter_routing_key
    return sorted({str(r["destination"]) for r in rows
                   if r.get("destination_type") == "queue"
                   and (key is None or topic_matches(str(r.get("routing_key", "")), key))})


def find(parsed: list[Binding], *, binding: str | None, queue: str | None,
         management: Callable[[], Any | None], vhost: str) -> list[Lot]:
    """The lots to read; ClientError 2 for a binding that is unknown or parks nowhere,
    4 when only the management API (``management()``, asked only then) could tell and
    does not answer."""
    if queue is not None:
        return [Lot(queue, (binding,) if binding else ())]
    chosen = [b for b in parsed if binding is None or b.name == binding]
    if binding is not None and not chosen:
        names = ", ".join(b.name for b in parsed) or "none"
        raise ClientError(EXIT_USAGE, f"no binding {binding!r} in the configuration "
                          f"(bindings: {names})", "ConfigError")
    found: dict[str, list[Binding]] = {}
    for b in chosen:
        if b.dead_letter_queue:
            found.setdefault(b.dead_letter_queue, []).append(b)
        elif b.dead_letter_exchange:
            mgmt = management()
            if mgmt is None:
                raise ClientError(EXIT_BROKER, f"binding {b.name!r} parks to exchange "
                                  f"{b.dead_letter_exchange!r}, whose queues only the "
                                  "RabbitMQ management API can list, and it does not "
                                  "answer: name the queue with --queue")
            for name in _exchange_lots(b, mgmt, vhost):
                found.setdefault(name, []).append(b)
        elif binding is not None:
            raise ClientError(EXIT_USAGE, f"binding {b.name!r} has no parking lot: set "
                              "dead_letter_queue (or dead_letter_exchange); without one a "
                              "dead letter is rejected to the queue's own "
                              "x-dead-letter-exchange, if any (then use --queue)",
                              "ConfigError")
    return [Lot(name, tuple(b.name for b in owners), _quorum(name, owners))
            for name, owners in found.items()]


def _quorum(queue: str, owners: list[Binding]) -> bool | None:
    """A dead_letter_queue is declared with its binding's type; other lots: unknown."""
    declaring = [b for b in owners if b.dead_letter_queue == queue]
    return any(b.quorum for b in declaring) if declaring else None
