"""rpcworker's own AMQP headers, and the broker's it reads: the counters a retried,
counted or parked copy carries, where a parked message came from and why, and the
sequence number of a confirmed copy. Pure.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

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
#: the sequence number of a copy published with confirms (``engine.publisher``), so that
#: a ``basic.return`` can be matched to its copy
SEQ_HEADER = "x-rpcworker-publish-seq"


def int_header(headers: Any, name: str) -> int:
    """A counter header as a non-negative int; 0 when missing or not a number."""
    try:
        return max(0, int(headers.get(name) or 0))
    except (TypeError, ValueError, AttributeError, OverflowError):  # Overflow: a float inf
        return 0


def retries_of(headers: Any) -> int:
    return int_header(headers, RETRIES_HEADER)


def utc_iso(now: float | None = None) -> str:
    """UTC, to the millisecond: ``2026-12-02T13:40:00.123Z`` (``now``: epoch seconds)."""
    moment = datetime.datetime.fromtimestamp(
        time.time() if now is None else now, datetime.timezone.utc
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
