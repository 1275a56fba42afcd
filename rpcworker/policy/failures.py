"""The copies that carry a failed message on: to the delay queue of its next retry, to
the parking lot, or back to the tail of its queue with one more redelivery counted; and
the names of the delay queues. Pure functions: the decisions choose which copy a
delivery gets, the engine's settle publishes it, ``amqp.topology`` declares the queues.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rpcworker.config.bindingconf import Binding
from rpcworker.wire.xheaders import (
    BINDING_HEADER,
    FAILURE_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_KEY_HEADER,
    ORIGINAL_QUEUE_HEADER,
    PARKED_AT_HEADER,
    REDELIVERIES_HEADER,
    RETRIES_HEADER,
    int_header,
    retries_of,
    utc_iso,
)

#: properties copied onto a republished message (expiration is dropped on purpose:
#: a per-message TTL would fight the delay queue's)
_KEPT_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "priority",
    "timestamp",
    "type",
    "app_id",
    "user_id",
)


@dataclasses.dataclass(frozen=True)
class Copy:
    """A message to publish (with publisher confirms) before the original is acked."""

    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]


def retry_queue_name(queue: str, ttl_ms: int, quorum: bool = False) -> str:
    """The delay queue for retries of ``queue`` waiting ``ttl_ms``: named by its TTL,
    so changing retry_delay never redeclares an existing queue with other arguments,
    and by its type, so switching a binding's queue_type never meets the old one (406)."""
    return f"{queue}.retry.{ttl_ms}" + (".quorum" if quorum else "")


def retry_ttls(binding: Binding) -> list[int]:
    """The distinct delays (ms) of attempts 1..max_retries."""
    ttls = {int(binding.retry_delay_for(n) * 1000) for n in range(1, binding.max_retries + 1)}
    return sorted(max(1, t) for t in ttls)


def _base(
    properties: Mapping[str, Any],
    headers: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    props = {k: properties[k] for k in _KEPT_PROPERTIES if properties.get(k) is not None}
    props["delivery_mode"] = 2
    return props, dict(headers or {})


def _keep_origin(hdrs: dict[str, Any], exchange: str, routing_key: str) -> None:
    """Remember where the message was first published (a retry comes back through the
    default exchange with the queue's name as its routing key)."""
    hdrs.setdefault(ORIGINAL_EXCHANGE_HEADER, exchange)
    hdrs.setdefault(ORIGINAL_KEY_HEADER, routing_key)


def retry_copy(
    binding: Binding,
    queue: str,
    body: bytes,
    properties: Mapping[str, Any],
    headers: Mapping[str, Any] | None,
    reason: str | None,
    exchange: str = "",
    routing_key: str = "",
) -> Copy:
    """The copy that waits in the delay queue of the next attempt."""
    props, hdrs = _base(properties, headers)
    _keep_origin(hdrs, exchange, routing_key)
    attempt = retries_of(hdrs) + 1
    hdrs[RETRIES_HEADER] = attempt
    if reason:
        hdrs[FAILURE_HEADER] = reason[:1000]
    ttl = max(1, int(binding.retry_delay_for(attempt) * 1000))
    return Copy("", retry_queue_name(queue, ttl, binding.is_quorum_queue(queue)), body, props, hdrs)


def count_copy(
    queue: str,
    body: bytes,
    properties: Mapping[str, Any],
    headers: Mapping[str, Any] | None,
    exchange: str = "",
    routing_key: str = "",
) -> Copy:
    """The copy that goes back to the tail of ``queue`` with one more redelivery counted."""
    props, hdrs = _base(properties, headers)
    _keep_origin(hdrs, exchange, routing_key)
    hdrs[REDELIVERIES_HEADER] = int_header(hdrs, REDELIVERIES_HEADER) + 1
    return Copy("", queue, body, props, hdrs)


def dead_letter_copy(
    binding: Binding,
    queue: str,
    body: bytes,
    properties: Mapping[str, Any],
    headers: Mapping[str, Any] | None,
    reason: str | None,
    exchange: str,
    routing_key: str,
) -> Copy | None:
    """The copy for the parking lot, or None when the binding has none (reject instead)."""
    if not binding.dead_letters_published:
        return None
    props, hdrs = _base(properties, headers)
    _keep_origin(hdrs, exchange, routing_key)
    hdrs.update(
        {
            FAILURE_HEADER: (reason or "failed")[:1000],
            BINDING_HEADER: binding.name,
            ORIGINAL_QUEUE_HEADER: queue,
            PARKED_AT_HEADER: utc_iso(),
        }
    )
    hdrs.setdefault(RETRIES_HEADER, 0)
    if binding.dead_letter_exchange:
        return Copy(
            binding.dead_letter_exchange,
            binding.dead_letter_routing_key or str(hdrs[ORIGINAL_KEY_HEADER]),
            body,
            props,
            hdrs,
        )
    assert binding.dead_letter_queue is not None
    return Copy("", binding.dead_letter_queue, body, props, hdrs)
