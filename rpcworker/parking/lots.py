"""Which queues are the parking lots of the configured bindings: read by the daemon
(``rpcworker_parked_messages``) and by ``rpcworker-client parked``.

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
from typing import Any
from urllib.parse import quote

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
    words = [
        r"[^.]+" if w == "*" else (r"#" if w == "#" else re.escape(w)) for w in pattern.split(".")
    ]
    regex = r"\.".join(words)
    regex = regex.replace(r"\.#", r"(?:\..*)?").replace(r"#\.", r"(?:.*\.)?").replace("#", ".*")
    return re.fullmatch(regex, key) is not None


def lots_of(parsed: list[Binding]) -> dict[str, tuple[str, ...]]:
    """Each configured parking-lot queue and the bindings that park there."""
    out: dict[str, tuple[str, ...]] = {}
    for b in parsed:
        if b.dead_letter_queue:
            out[b.dead_letter_queue] = (*out.get(b.dead_letter_queue, ()), b.name)
    return out


def exchange_lots(binding: Binding, mgmt: Any, vhost: str) -> list[str]:
    """The queues that ``binding``'s dead_letter_exchange routes its dead letters to."""
    exchange = str(binding.dead_letter_exchange)
    path = f"/api/exchanges/{quote(vhost, safe='')}/{quote(exchange, safe='')}/bindings/source"
    rows = mgmt.get(path) or []
    key = binding.dead_letter_routing_key
    return sorted(
        {
            str(r["destination"])
            for r in rows
            if r.get("destination_type") == "queue"
            and (key is None or topic_matches(str(r.get("routing_key", "")), key))
        }
    )


def quorum_of(queue: str, owners: list[Binding]) -> bool | None:
    """A dead_letter_queue is declared with its binding's type; other lots: unknown."""
    declaring = [b for b in owners if b.dead_letter_queue == queue]
    return any(b.quorum for b in declaring) if declaring else None
