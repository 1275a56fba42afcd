"""oslo.messaging's envelope 2.0 and the JSON inside it: strict JSON both ways, wrapping
and unwrapping, the request and notification dicts as oslo.messaging 18 builds them.
Pure functions, no I/O.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Mapping
from typing import Any

OSLO_VERSION_KEY = "oslo.version"
OSLO_MESSAGE_KEY = "oslo.message"
OSLO_VERSION = "2.0"
CONTEXT_PREFIX = "_context_"
JSON = "application/json"


class Refused(Exception):
    """A message that must not be run: ``str()`` is the reason."""


def _no_constants(name: str) -> Any:
    raise Refused(f"JSON constant {name} is not allowed")


#: one decoder for every message (json.loads with arguments builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def loads(text: str) -> Any:
    """Strict JSON: NaN and Infinity are refused, and so is nesting deeper than the
    interpreter's recursion limit (ValueError)."""
    try:
        return _DECODER.decode(text)
    except Refused as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(value: Any) -> str:
    """JSON as oslo.messaging writes it (no NaN, ", " and ": " separators)."""
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def envelope(inner: Mapping[str, Any]) -> bytes:
    """oslo.messaging envelope 2.0: ``inner`` as a JSON string in ``oslo.message``."""
    return json.dumps({OSLO_VERSION_KEY: OSLO_VERSION, OSLO_MESSAGE_KEY: dumps(inner)}).encode(
        "utf-8"
    )


def unwrap(data: dict[str, Any]) -> Any:
    """The inner message of an envelope 2.0 (``data`` has ``oslo.version``); raises
    ``Refused`` for another version or a malformed envelope."""
    version = data.get(OSLO_VERSION_KEY)
    if not isinstance(version, str):
        raise Refused("oslo envelope: oslo.version is not a string")
    major, _, minor = version.partition(".")
    if major != "2" or not minor.isdigit() or int(minor) > 0:
        raise Refused(f"oslo envelope version {version!r} not supported (2.0 is)")
    inner = data.get(OSLO_MESSAGE_KEY)
    if not isinstance(inner, str):
        raise Refused("oslo envelope: oslo.message is not a JSON string")
    try:
        return loads(inner)
    except ValueError as exc:
        raise Refused(f"oslo envelope: oslo.message is not JSON: {exc}") from None


def oslo_request(
    method: str,
    args: Mapping[str, Any],
    context: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
    version: str | None = None,
    msg_id: str | None = None,
    reply_q: str | None = None,
    timeout: float | None = None,
    unique_id: str | None = None,
) -> dict[str, Any]:
    """The inner dict of a request, field for field and in the order oslo.messaging 18
    builds it. ``msg_id`` and ``reply_q`` make it a call (with ``_timeout``)."""
    msg: dict[str, Any] = {"method": method, "args": dict(args)}
    if namespace is not None:
        msg["namespace"] = namespace
    if version is not None:
        msg["version"] = version
    if msg_id is not None:
        msg["_msg_id"] = msg_id
        msg["_reply_q"] = reply_q
        msg["_timeout"] = timeout
    msg["_unique_id"] = unique_id or uuid.uuid4().hex
    for key, value in (context or {}).items():
        msg[f"{CONTEXT_PREFIX}{key}"] = value
    return msg


def oslo_notification(
    priority: str,
    event_type: str,
    payload: Any,
    publisher_id: str,
    context: Mapping[str, Any] | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """The inner dict of a notification as oslo.messaging's ``Notifier`` builds it
    (``notify/notifier.py`` ``_notify``; the priority in capitals, the context packed
    as ``_context_*``); send it wrapped by ``envelope`` with routing key
    ``TOPIC.priority``."""
    msg: dict[str, Any] = {
        "message_id": message_id or str(uuid.uuid4()),
        "publisher_id": publisher_id,
        "event_type": event_type,
        "priority": priority.upper(),
        "payload": payload,
        "timestamp": str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)),
    }
    for key, value in (context or {}).items():
        msg[f"{CONTEXT_PREFIX}{key}"] = value
    return msg
