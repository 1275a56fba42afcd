"""Binding -> the kombu exchanges, queues and bindings it declares, and where its
failures go (the delay queues of its retries, its parking lot).

``rpc`` bindings declare exactly what an oslo.messaging 18 RPC server declares for
``Target(topic, server)`` with the same ``[oslo_messaging_rabbit]`` options
(``_drivers/impl_rabbit.py``): queues TOPIC and TOPIC.SERVER on the topic control
exchange (quorum queues and a durable exchange with ``rabbit_quorum_queue``; the
binding's ``x-delivery-limit`` / ``x-max-in-memory-*`` merged into ``queue_arguments``
by ``bindingconf``), and the TOPIC_fanout fanout exchange with

* a per-process classic queue ``TOPIC_fanout_<id>`` (``x-expires``; oslo's default),
* a per-process durable quorum queue of that name (``rabbit_transient_quorum_queue``),
* or one stream ``TOPIC_fanout`` shared by every process (``rabbit_stream_fanout``),
  which each reads from its own offset (``engine.streams``).

``<id>`` is a uuid, or ``HOSTNAME:PROCESSNAME:N`` with ``use_queue_manager``.
``notification`` bindings declare what oslo's notification listener (and notifier)
declare.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from kombu import Exchange, Queue, binding

from rpcworker.config.bindingconf import Binding
from rpcworker.policy.failures import retry_queue_name, retry_ttls


@dataclasses.dataclass(frozen=True)
class Topology:
    """What one binding consumes from."""

    binding: Binding
    queues: tuple[Queue, ...]
    #: queues to delete on a clean stop (per-process fanout queues, as oslo does)
    transient: tuple[str, ...] = ()


def build(b: Binding, instance_id: str | None = None) -> Topology:
    """The entities of ``b``. ``instance_id`` names per-process queues (default: a new uuid).

    Build once per process and reuse after reconnects, so per-process queues keep
    their names.
    """
    instance = instance_id or uuid.uuid4().hex
    if b.type == "rpc":
        return _rpc(b, instance)
    if b.type == "notification":
        return _notification(b)
    exchange = Exchange(b.exchange, type=b.type, durable=b.durable, auto_delete=False)
    queue_name = b.queue or f"{b.exchange}_{b.name}_{instance}"
    if b.type == "fanout":
        bindings = [binding(exchange, routing_key="")]
    else:
        bindings = [binding(exchange, routing_key=key) for key in b.routing_keys]
    queue = Queue(
        queue_name,
        bindings=bindings,
        durable=b.durable,
        auto_delete=b.auto_delete,
        exclusive=b.exclusive,
        queue_arguments=dict(b.queue_arguments) or None,
    )
    transient = (queue_name,) if b.queue is None else ()
    return Topology(binding=b, queues=(queue,), transient=transient)


def _rpc(b: Binding, instance: str) -> Topology:
    assert b.topic is not None and b.server is not None
    topic_exchange = Exchange(
        b.exchange, type="topic", durable=b.durable, auto_delete=b.auto_delete
    )
    args = dict(b.queue_arguments) or None
    queues = [
        Queue(
            key,
            topic_exchange,
            routing_key=key,
            durable=b.durable,
            auto_delete=b.auto_delete,
            queue_arguments=args,
        )
        for key in (b.topic, f"{b.topic}.{b.server}")
    ]
    # oslo: the fanout exchange (and queue) is durable with transient quorum queues,
    # which stream fanout requires
    durable = b.fanout != "classic"
    fanout_exchange = Exchange(
        f"{b.topic}_fanout", type="fanout", durable=durable, auto_delete=True
    )
    fanout_queue = fanout_queue_name(b, instance)
    queues.append(
        Queue(
            fanout_queue,
            fanout_exchange,
            routing_key=b.topic,
            durable=durable,
            auto_delete=False,
            queue_arguments=dict(b.fanout_arguments) or None,
        )
    )
    # oslo deletes a per-process fanout queue on a clean stop, but not the shared
    # stream, nor a queue manager's (its name is taken back by the next start)
    transient = (fanout_queue,) if b.fanout != "stream" and b.queue_manager is None else ()
    return Topology(binding=b, queues=tuple(queues), transient=transient)


def fanout_queue_name(b: Binding, instance: str) -> str:
    """TOPIC_fanout (the shared stream), or TOPIC_fanout_<instance>."""
    if b.fanout == "stream":
        return f"{b.topic}_fanout"
    return f"{b.topic}_fanout_{instance}"


def process_instance(bindings: list[Binding], worker: int) -> str:
    """What names this process's per-process queues: oslo's queue manager's
    ``HOSTNAME:PROCESSNAME:N`` (``N`` = worker process 1 .. workers, so unique per
    process and the same after a restart), else a new uuid."""
    for b in bindings:
        if b.queue_manager is not None:
            return f"{b.queue_manager}:{worker + 1}"
    return uuid.uuid4().hex


def is_stream(queue: Queue) -> bool:
    return (getattr(queue, "queue_arguments", None) or {}).get("x-queue-type") == "stream"


def _notification(b: Binding) -> Topology:
    """What oslo.messaging's notification listener declares for its targets (one per
    exchange and topic) and priorities: the topic exchange(s), and a queue ``TOPIC.PRIORITY``
    bound with that key on each exchange, or one queue ``POOL`` bound with every key.
    The flags are those of oslo's notifier too (``_publish_and_creates_default_queue``):
    durable as the exchange, not auto-delete, quorum arguments with queue_type."""
    exchanges = [
        Exchange(e, type="topic", durable=b.durable, auto_delete=b.auto_delete) for e in b.exchanges
    ]
    keys = [f"{t}.{p}" for t in b.topics for p in b.priorities]
    args = dict(b.queue_arguments) or None
    if b.pool:
        names_and_keys = [(b.pool, keys)]
    else:
        names_and_keys = [(key, [key]) for key in keys]
    queues = tuple(
        Queue(
            name,
            bindings=[binding(e, routing_key=k) for e in exchanges for k in ks],
            durable=b.durable,
            auto_delete=b.auto_delete,
            queue_arguments=args,
        )
        for name, ks in names_and_keys
    )
    return Topology(binding=b, queues=queues)


def describe(t: Topology) -> list[str]:
    """Human-readable lines of what ``t`` declares (for --check-config)."""
    b = t.binding
    priorities = f"priorities {', '.join(b.priorities)}, " if b.type == "notification" else ""
    lines = [
        f"binding {b.name} (type {b.type}, handler {b.handler}, {priorities}"
        f"acknowledge {b.acknowledge}, prefetch {b.prefetch_count})"
    ]
    seen_exchanges: set[str] = set()
    for q in t.queues:
        for bd in q.bindings or [binding(q.exchange, routing_key=q.routing_key)]:
            ex = bd.exchange
            if ex is not None and ex.name not in seen_exchanges:
                seen_exchanges.add(ex.name)
                lines.append(
                    f"  exchange {ex.name!r} type={ex.type} durable={ex.durable} "
                    f"auto_delete={ex.auto_delete}"
                )
        by_exchange: dict[str, list[str]] = {}
        for bd in q.bindings or [binding(q.exchange, routing_key=q.routing_key)]:
            by_exchange.setdefault(bd.exchange.name, []).append(bd.routing_key)
        bound = "; ".join(f"{name!r} with keys {keys}" for name, keys in by_exchange.items())
        lines.append(
            f"  queue {q.name!r} durable={q.durable} auto_delete={q.auto_delete} "
            f"exclusive={q.exclusive} arguments={getattr(q, 'queue_arguments', None) or {}} "
            f"bound to {bound}"
        )
    return lines


# -- where failures go: delay queues and the parking lot ------------------------------------

#: what makes a delay queue of a quorum work queue replicated and loss-free: its
#: TTL dead-lettering back to the work queue is at-least-once (RabbitMQ >= 3.10), which
#: requires x-overflow reject-publish
_QUORUM_DELAY_ARGUMENTS = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def is_transient(queue: Queue) -> bool:
    """A per-process queue: exclusive (a fanout binding's), or expiring with its process
    (an rpc binding's ``TOPIC_fanout_<uuid>``, ``x-expires`` as oslo declares it), or the
    stream an rpc binding reads its fanout casts from."""
    args = getattr(queue, "queue_arguments", None) or {}
    return bool(queue.exclusive or args.get("x-expires") or args.get("x-queue-type") == "stream")


def can_retry(queue: Queue) -> bool:
    """Per-process queues get no delay queues (as many queues per process as oslo's, not
    one more per retry delay): their failures are dead-lettered. A stream neither: a
    message stays in it, and a retry copy would reach every reader."""
    return not is_transient(queue)


def retry_queues(binding: Binding, queue: Queue) -> list[Queue]:
    """Delay queues of ``queue``: a message TTL that dead-letters back to ``queue``."""
    if binding.ack_before or not can_retry(queue):
        return []
    if binding.type == "rpc" and queue.name not in binding.work_queues:
        return []  # the fanout queue, even without x-expires (ttl 0)
    quorum = binding.is_quorum_queue(queue.name)
    result = []
    for ttl in retry_ttls(binding):
        args: dict[str, Any] = {
            "x-message-ttl": ttl,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue.name,
        }
        if quorum:
            args.update(_QUORUM_DELAY_ARGUMENTS)
        result.append(
            Queue(
                retry_queue_name(queue.name, ttl, quorum),
                durable=queue.durable or quorum,
                auto_delete=False,
                queue_arguments=args,
                no_declare=False,
            )
        )
    return result


def parking_lot(binding: Binding) -> tuple[Exchange | None, Queue | None]:
    """The dead-letter exchange and/or queue to declare for ``binding``."""
    exchange = None
    if binding.dead_letter_exchange:
        exchange = Exchange(binding.dead_letter_exchange, type="topic", durable=True)
    queue = None
    if binding.dead_letter_queue:
        args = {"x-queue-type": "quorum"} if binding.quorum else None
        if exchange is not None:
            queue = Queue(
                binding.dead_letter_queue,
                exchange,
                routing_key=binding.dead_letter_routing_key or "#",
                durable=True,
                queue_arguments=args,
            )
        else:
            queue = Queue(binding.dead_letter_queue, durable=True, queue_arguments=args)
    return exchange, queue
