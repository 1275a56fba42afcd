"""A parked message as the operator sees it: where it came from, why it is parked, what
it asked for; its export form (one JSON object, body and headers exact) and the copy a
replay publishes. Pure: which queues are lots is ``parking.lots``; reading and moving
them is ``client.browse``.

A message reaches a parking lot with rpcworker's headers (``failures.dead_letter_copy``:
``x-rpcworker-failure``, ``-binding``, ``-retries``, ``-original-*``, ``-parked-at``), or
with RabbitMQ's own ``x-death`` when a queue's ``x-dead-letter-exchange`` put it there;
both are read.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import functools
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from rpcworker.wire import decoding
from rpcworker.wire.xheaders import (
    BINDING_HEADER,
    FAILURE_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_KEY_HEADER,
    ORIGINAL_QUEUE_HEADER,
    PARKED_AT_HEADER,
    QUORUM_DELIVERY_COUNT,
    REDELIVERIES_HEADER,
    RETRIES_HEADER,
    int_header,
    utc_iso,
)

#: how many times the message was replayed, and when last (a replay sets both)
REPLAYED_HEADER = "x-rpcworker-replayed"
REPLAYED_AT_HEADER = "x-rpcworker-replayed-at"
#: why it was parked the last time before its replay (the next failure sets its own)
REPLAYED_FAILURE_HEADER = "x-rpcworker-replayed-failure"

#: what a replay takes off: the counters that would park it again at once, where it was
#: parked, and the broker's own dead-letter and delivery counts
_RESET_HEADERS = (
    RETRIES_HEADER,
    REDELIVERIES_HEADER,
    QUORUM_DELIVERY_COUNT,
    FAILURE_HEADER,
    BINDING_HEADER,
    ORIGINAL_QUEUE_HEADER,
    PARKED_AT_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)

#: the basic properties kept on an export and a replay (application_headers are ``headers``)
PROPERTIES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:  # py-amqp decodes AMQP timestamps as naive UTC
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclasses.dataclass(frozen=True)
class Parked:
    """One message of a parking lot: ``position`` 0 is the head of ``queue``."""

    queue: str
    position: int
    body: bytes
    properties: Mapping[str, Any]
    headers: Mapping[str, Any]

    # -- why and where from ------------------------------------------------------------

    @property
    def _death(self) -> Mapping[str, Any]:
        """The broker's first dead-lettering of it (``x-death``: the newest first)."""
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[-1], Mapping):
            return deaths[-1]
        return {}

    @property
    def binding(self) -> str | None:
        value = self.headers.get(BINDING_HEADER)
        return str(value) if value is not None else None

    @property
    def reason(self) -> str:
        if self.headers.get(FAILURE_HEADER) is not None:
            return str(self.headers[FAILURE_HEADER])
        return str(self._death.get("reason") or "unknown")

    @property
    def retries(self) -> int:
        return int_header(self.headers, RETRIES_HEADER)

    @property
    def original_exchange(self) -> str:
        if ORIGINAL_EXCHANGE_HEADER in self.headers:
            return str(self.headers[ORIGINAL_EXCHANGE_HEADER] or "")
        return str(self._death.get("exchange") or "")

    @property
    def original_routing_key(self) -> str:
        if ORIGINAL_KEY_HEADER in self.headers:
            return str(self.headers[ORIGINAL_KEY_HEADER] or "")
        keys = self._death.get("routing-keys")
        return str(keys[0]) if isinstance(keys, list) and keys else ""

    @property
    def original_queue(self) -> str | None:
        value = self.headers.get(ORIGINAL_QUEUE_HEADER, self._death.get("queue"))
        return str(value) if value is not None else None

    @property
    def replays(self) -> int:
        return int_header(self.headers, REPLAYED_HEADER)

    def parked_at(self) -> float | None:
        """When it was parked (epoch seconds), else when it was published, if known."""
        return (
            _parse_iso(self.headers.get(PARKED_AT_HEADER))
            or _epoch(self._death.get("time"))
            or _epoch(self.properties.get("timestamp"))
        )

    def age(self, now: float | None = None) -> float | None:
        at = self.parked_at()
        return None if at is None else max(0.0, (time.time() if now is None else now) - at)

    # -- what it is ----------------------------------------------------------------------

    @functools.cached_property
    def _request(self) -> decoding.Request | decoding.Rejected:
        return decoding.decode(
            self.body,
            self.properties.get("content_type"),
            self.properties.get("content_encoding"),
            self.headers,
            self.properties,
        )

    def decoded(self) -> Any:
        """The body as JSON (the oslo envelope unwrapped), or None when it is not JSON."""
        request = self._request
        return request.body if isinstance(request, decoding.Request) else None

    def kind(self) -> tuple[str, str | None]:
        """(``call``|``cast``|``notification``|``event``|``undecodable``, method or event
        type)."""
        request = self._request
        if not isinstance(request, decoding.Request):
            return "undecodable", None
        if request.is_rpc:
            return ("call" if request.is_call else "cast"), request.method
        body = request.body
        if isinstance(body, dict) and "event_type" in body:
            kind = "notification" if "priority" in body and "publisher_id" in body else "event"
            return kind, str(body["event_type"])
        return "event", None

    def ids(self) -> dict[str, str]:
        """message_id and correlation_id (properties), oslo's _unique_id / _msg_id and a
        notification's message_id (body)."""
        out = {
            k: str(self.properties[k])
            for k in ("message_id", "correlation_id")
            if self.properties.get(k)
        }
        body = self.decoded()
        if isinstance(body, dict):
            for key, name in (
                ("_unique_id", "unique_id"),
                ("_msg_id", "msg_id"),
                ("message_id", "notification_id"),
            ):
                if isinstance(body.get(key), str):
                    out[name] = body[key]
        return out

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The fields of ``parked list``."""
        kind, name = self.kind()
        return {
            "queue": self.queue,
            "position": self.position,
            "binding": self.binding,
            "reason": self.reason,
            "retries": self.retries,
            "replays": self.replays,
            "original_exchange": self.original_exchange,
            "original_routing_key": self.original_routing_key,
            "original_queue": self.original_queue,
            "kind": kind,
            "name": name,
            "ids": self.ids(),
            "size": len(self.body),
            "age": self.age(now),
        }

    # -- export and replay ---------------------------------------------------------------

    def to_json(self, *, exact: bool, now: float | None = None) -> dict[str, Any]:
        """The summary, properties and headers, and the body: decoded (``body``), or
        exact (``body_text``, or ``body_base64`` when it is not UTF-8) for an export."""
        out = self.summary(now)
        out["properties"] = _tagged(dict(self.properties))
        out["headers"] = _tagged(dict(self.headers))
        if not exact:
            value = self.decoded()
            if value is not None:
                out["body"] = value
                return out
        try:
            out["body_text"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(self.body).decode("ascii")
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Parked:
        """A message of an export (``to_json(exact=True)``), byte for byte."""
        if "body_text" in obj:
            body = str(obj["body_text"]).encode("utf-8")
        elif "body_base64" in obj:
            body = base64.b64decode(str(obj["body_base64"]))
        else:
            raise ValueError("neither body_text nor body_base64: not an export line")
        return cls(
            queue=str(obj.get("queue") or ""),
            position=int(obj.get("position") or 0),
            body=body,
            properties=_untagged(obj.get("properties") or {}),
            headers=_untagged(obj.get("headers") or {}),
        )

    def replay_headers(self, now: float | None = None) -> dict[str, Any]:
        """The headers of the replayed copy: counters and parking marks off, the replay
        counted (``x-rpcworker-replayed``, ``-replayed-at``), the last reason kept."""
        hdrs = {k: v for k, v in self.headers.items() if k not in _RESET_HEADERS}
        hdrs.setdefault(ORIGINAL_EXCHANGE_HEADER, self.original_exchange)
        hdrs.setdefault(ORIGINAL_KEY_HEADER, self.original_routing_key)
        hdrs[REPLAYED_HEADER] = self.replays + 1
        hdrs[REPLAYED_AT_HEADER] = utc_iso(now)
        hdrs[REPLAYED_FAILURE_HEADER] = self.reason[:1000]
        return hdrs

    def kept_properties(self) -> dict[str, Any]:
        return {k: self.properties[k] for k in PROPERTIES if self.properties.get(k) is not None}


def read_export(path: str) -> Iterator[Parked]:
    """The messages of a ``parked export`` file (JSON lines; blank lines skipped)."""
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield Parked.from_json(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None


# -- header values that JSON has no type for ----------------------------------------------


def _tagged(value: Any) -> Any:
    """JSON-safe: a datetime as ``{"$datetime": ISO}``, bytes as ``{"$bytes": base64}``,
    a Decimal as ``{"$decimal": text}``; the rest as it is."""
    if isinstance(value, dict):
        return {str(k): _tagged(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tagged(v) for v in value]
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    return value


def _untagged(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, raw),) = value.items()
            if tag == "$datetime":
                return datetime.datetime.fromisoformat(str(raw))
            if tag == "$bytes":
                return base64.b64decode(str(raw))
            if tag == "$decimal":
                return decimal.Decimal(str(raw))
        return {k: _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value
