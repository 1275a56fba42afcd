"""Where failed messages go: delay queues for retries, the parking lot, the copies
that carry a message there and the counters in their headers. Pure functions: the
policy decides which copy a delivery gets, settle publishes it.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Mapping
from typing import Any

from kombu import Exchange, Queue

from rpcworker.config.bindingconf import Binding

#: retries of a cast/event so far (set on each retry copy)
RETRIES_HEADER = "x-rpcworker-retries"
#: redeliveries counted on a classic queue (set on each count copy)
REDELIVERIES_HEADER = "x-rpcworker-redeliveries"
#: the broker's count on a quorum queue
QUORUM_DELIVERY_COUNT = "x-delivery-count"
BINDING_HEADER = "x-rpcworker-binding"
FAILURE_HEADER = "x-rpcworker-failure"
ORIGINAL_EXCHANGE_HEADER = "x-rpcworker-original-exchange"
ORIGINAL_KEY_HEADER = "x-rpcworker-original-routing-key"
ORIGINAL_QUEUE_HEADER = "x-rpcworker-original-queue"
#: when it was parked (UTC, ISO 8601 to the millisecond)
PARKED_AT_HEADER = "x-rpcworker-parked-at"

#: properties copied onto a republished message (expiration is dropped on purpose:
#: a per-message TTL would fight the delay queue's)
_KEPT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to",
                    "message_id", "priority", "timestamp", "type", "app_id", "user_id")


@dataclasses.dataclass(frozen=True)
class Copy:
    """A message to publish (with publisher confirms) before the original is acked."""

    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]


#: what makes a delay queue of a quorum work queue replicated and loss-free: its
#: TTL dead-lettering back to the work queue is at-least-once (RabbitMQ >= 3.10), which
#: requires x-overflow reject-publish
_QUORUM_DELAY_ARGUMENTS = {
    "x-queue-type": "quorum",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def int_header(headers: Any, name: str) -> int:
    """A counter header as a non-negative int; 0 when missing or not a number."""
    try:
        return max(0, int(headers.get(name) or 0))
    except (TypeError, ValueError, AttributeError, OverflowError):  # Overflow: a float inf
        return 0


def retries_of(headers: Any) -> int:
    return int_header(headers, RETRIES_HEADER)


def retry_queue_name(queue: str, ttl_ms: int, quorum: bool = False) -> str:
    """The delay queue for retries of ``queue`` waiting ``ttl_ms``: named by its TTL,
    so changing retry_delay never redeclares an existing queue with other arguments,
    and by its type, so switching a binding's queue_type never meets the old one (406)."""
    return f"{queue}.retry.{ttl_ms}" + (".quorum" if quorum else "")


def retry_ttls(binding: Binding) -> list[int]:
    """The distinct delays (ms) of attempts 1..max_retries."""
    ttls = {int(binding.retry_delay_for(n) * 1000) for n in range(1, binding.max_retries + 1)}
    return sorted(max(1, t) for t in ttls)


def is_transient(queue: Queue) -> bool:
    """A per-process queue: exclusive (a fanout binding's), or expiring with its process
    (an rpc binding's ``TOPIC_fanout_<uuid>``, ``x-expires`` as oslo declares it)."""
    return bool(queue.exclusive or (getattr(queue, "queue_arguments", None) or {}
                                    ).get("x-expires"))


def can_retry(queue: Queue) -> bool:
    """Per-process queues get no delay queues (as many queues per process as oslo's, not
    one more per retry delay): their failures are dead-lettered."""
    return not is_transient(queue)


def retry_queues(binding: Binding, queue: Queue) -> list[Queue]:
    """Delay queues of ``queue``: a message TTL that dead-letters back to ``queue``."""
    if binding.ack_before or not can_retry(queue):
        return []
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
        result.append(Queue(retry_queue_name(queue.name, ttl, quorum),
                            durable=queue.durable or quorum, auto_delete=False,
                            queue_arguments=args, no_declare=False))
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
            queue = Queue(binding.dead_letter_queue, exchange,
                          routing_key=binding.dead_letter_routing_key or "#", durable=True,
                          queue_arguments=args)
        else:
            queue = Queue(binding.dead_letter_queue, durable=True, queue_arguments=args)
    return exchange, queue


def utc_iso(now: float | None = None) -> str:
    """UTC, to the millisecond: ``2026-12-02T13:40:00.123Z`` (``now``: epoch seconds)."""
    moment = datetime.datetime.fromtimestamp(time.time() if now is None else now,
                                             datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _base(properties: Mapping[str, Any], headers: Mapping[str, Any] | None,
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    props = {k: properties[k] for k in _KEPT_PROPERTIES if properties.get(k) is not None}
    props["delivery_mode"] = 2
    return props, dict(headers or {})


def _keep_origin(hdrs: dict[str, Any], exchange: str, routing_key: str) -> None:
    """Remember where the message was first published (a retry comes back through the
    default exchange with the queue's name as its routing key)."""
    hdrs.setdefault(ORIGINAL_EXCHANGE_HEADER, exchange)
    hdrs.setdefault(ORIGINAL_KEY_HEADER, routing_key)


def retry_copy(binding: Binding, queue: str, body: bytes, properties: Mapping[str, Any],
               headers: Mapping[str, Any] | None, reason: str | None, exchange: str = "",
               routing_key: str = "") -> Copy:
    """The copy that waits in the delay queue of the next attempt."""
    props, hdrs = _base(properties, headers)
    _keep_origin(hdrs, exchange, routing_key)
    attempt = retries_of(hdrs) + 1
    hdrs[RETRIES_HEADER] = attempt
    if reason:
        hdrs[FAILURE_HEADER] = reason[:1000]
    ttl = max(1, int(binding.retry_delay_for(attempt) * 1000))
    return Copy("", retry_queue_name(queue, ttl, binding.is_quorum_queue(queue)), body, props,
                hdrs)


def count_copy(queue: str, body: bytes, properties: Mapping[str, Any],
               headers: Mapping[str, Any] | None, exchange: str = "",
               routing_key: str = "") -> Copy:
    """The copy that goes back to the tail of ``queue`` with one more redelivery counted."""
    props, hdrs = _base(properties, headers)
    _keep_origin(hdrs, exchange, routing_key)
    hdrs[REDELIVERIES_HEADER] = (
        int_header(hdrs, REDELIVERIES_HEADER) + 1)
    return Copy("", queue, body, props, hdrs)


def dead_letter_copy(binding: Binding, queue: str, body: bytes,
                     properties: Mapping[str, Any], headers: Mapping[str, Any] | None,
                     reason: str | None, exchange: str, routing_key: str) -> Copy | None:
    """The copy for the parking lot, or None when the binding has none (reject instead)."""
    if not binding.dead_letters_published:
        return None
    props, hdrs = _base(properties, headers)
    _keep_origin(hdrs, exchange, routing_key)
    hdrs.update({
        FAILURE_HEADER: (reason or "failed")[:1000],
        BINDING_HEADER: binding.name,
        ORIGINAL_QUEUE_HEADER: queue,
        PARKED_AT_HEADER: utc_iso(),
    })
    hdrs.setdefault(RETRIES_HEADER, 0)
    if binding.dead_letter_exchange:
        return Copy(binding.dead_letter_exchange,
                    binding.dead_letter_routing_key or str(hdrs[ORIGINAL_KEY_HEADER]),
                    body, props, hdrs)
    assert binding.dead_letter_queue is not None
    return Copy("", binding.dead_letter_queue, body, props, hdrs)
