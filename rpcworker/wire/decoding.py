"""One delivery in: bytes, properties and headers -> ``Request`` (an oslo.messaging RPC
request, a plain AMQP RPC request, an event, a notification) or ``Rejected`` with the
reason. Pure functions, so they can be tested (and fuzzed) without a broker; ``decode``
never raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from rpcworker.wire.envelope import (
    CONTEXT_PREFIX,
    JSON,
    OSLO_VERSION_KEY,
    Refused,
    loads,
    unwrap,
)

_ACCEPTED_TYPES = ("", JSON)
_ACCEPTED_ENCODINGS = ("", "utf-8", "utf8")
#: content types and encodings accepted as they come, without normalising them
_AS_SENT_TYPES = frozenset({None, *_ACCEPTED_TYPES})
_AS_SENT_ENCODINGS = frozenset({None, *_ACCEPTED_ENCODINGS})


#: how a reply is written: oslo.messaging's envelope (``_msg_id``, on ``_reply_q``) or
#: plain AMQP RPC (``correlation_id``, on ``reply_to``)
ReplyStyle = Literal["oslo", "amqp"]


@dataclasses.dataclass(frozen=True)
class ReplyRoute:
    """Where and how the answer to a call goes."""

    style: ReplyStyle
    routing_key: str  # _reply_q or reply_to; published on the default exchange
    msg_id: str | None = None  # oslo _msg_id
    correlation_id: str | None = None  # plain AMQP RPC


@dataclasses.dataclass(frozen=True)
class Notification:
    """An oslo.messaging notification (``Notifier``, driver messagingv2 or messaging)."""

    priority: str  # lower case, as oslo's dispatcher compares it
    publisher_id: Any
    event_type: Any
    payload: Any
    #: ``message_id`` and ``timestamp``, as oslo's dispatcher hands them to the endpoint
    metadata: Mapping[str, Any]
    #: the ``_context_*`` fields without the prefix (oslo's unpack_context)
    context: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Request:
    """A decoded delivery: an RPC request (call/cast) or an event (no ``method``)."""

    body: Any
    method: str | None = None
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    namespace: str | None = None
    version: str = "1.0"
    reply: ReplyRoute | None = None
    unique_id: str | None = None
    #: oslo call-monitor timeout (``_timeout``): send a heartbeat every timeout/2 s
    monitor_timeout: float | None = None
    routing_key: str = ""
    exchange: str = ""
    headers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    redelivered: bool = False
    #: set for a delivery of a notification binding (``as_notification``)
    notification: Notification | None = None

    @property
    def is_rpc(self) -> bool:
        return self.method is not None

    @property
    def is_call(self) -> bool:
        return self.reply is not None


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A delivery that must not be executed, with the reason (for the log)."""

    reason: str
    #: set when the sender waits for an answer: it gets the error instead of a timeout
    reply: ReplyRoute | None = None


def decode(
    body: bytes | str,
    content_type: str | None = None,
    content_encoding: str | None = None,
    headers: Mapping[str, Any] | None = None,
    properties: Mapping[str, Any] | None = None,
    delivery_info: Mapping[str, Any] | None = None,
    max_size: int | None = None,
) -> Request | Rejected:
    """Turn one delivery into a Request, or a Rejected saying why not. Never raises.

    A body longer than ``max_size`` bytes is refused before anything is decoded.
    """
    try:
        if max_size is not None and len(body) > max_size:
            raise Refused(f"body of {len(body)} bytes is over max_message_size ({max_size})")
        return _decode(
            body,
            content_type,
            content_encoding,
            headers or {},
            properties or {},
            delivery_info or {},
        )
    except Refused as exc:
        return Rejected(str(exc), _amqp_route(properties or {}))
    except Exception as exc:  # defensive: decode must never take the loop down
        return Rejected(f"cannot decode: {type(exc).__name__}: {exc}", None)


def as_notification(request: Request) -> Request | Rejected:
    """``request`` (decoded for a notification binding) read as an oslo notification:
    the envelope 2.0 is already unwrapped, a bare 1.0 message is the same dict. Its
    ``message_id`` becomes the request's id (duplicate suppression)."""
    body = request.body
    if not isinstance(body, dict) or request.method is not None:
        return Rejected(
            "not an oslo notification: "
            + (
                "an RPC request"
                if request.method is not None
                else f"the body is a JSON {type(body).__name__}, not an object"
            )
        )
    priority = body.get("priority")
    context = {k[len(CONTEXT_PREFIX) :]: v for k, v in body.items() if k.startswith(CONTEXT_PREFIX)}
    message_id = body.get("message_id")
    notification = Notification(
        priority=priority.lower() if isinstance(priority, str) else "",
        publisher_id=body.get("publisher_id"),
        event_type=body.get("event_type"),
        payload=body.get("payload"),
        metadata={"message_id": message_id, "timestamp": body.get("timestamp")},
        context=context,
    )
    return dataclasses.replace(
        request,
        notification=notification,
        unique_id=message_id if isinstance(message_id, str) and message_id else None,
    )


def _amqp_route(properties: Mapping[str, Any]) -> ReplyRoute | None:
    reply_to = properties.get("reply_to")
    if isinstance(reply_to, str) and reply_to:
        corr = properties.get("correlation_id")
        return ReplyRoute("amqp", reply_to, correlation_id=corr if isinstance(corr, str) else None)
    return None


def _decode(
    body: bytes | str,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any],
    properties: Mapping[str, Any],
    delivery_info: Mapping[str, Any],
) -> Request | Rejected:
    if content_type not in _AS_SENT_TYPES:  # the usual values need no normalising
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in _ACCEPTED_TYPES:
            raise Refused(f"content type {content_type!r} refused: only {JSON} is accepted")
    if content_encoding not in _AS_SENT_ENCODINGS:
        cenc = (content_encoding or "").strip().lower()
        if cenc not in _ACCEPTED_ENCODINGS:
            raise Refused(f"content encoding {content_encoding!r} refused: only utf-8 is accepted")
    if headers.get("compression"):
        raise Refused(f"compressed bodies ({headers.get('compression')!r}) are refused")
    if isinstance(body, bytes | bytearray | memoryview):  # bytes(b) of bytes is b: no copy
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    elif isinstance(body, str):
        text = body
    else:
        raise Refused(f"body of type {type(body).__name__} refused")
    try:
        data = loads(text)
    except ValueError as exc:
        raise Refused(f"body is not JSON: {exc}") from None
    del text  # a copy of the body as large as it: not held while the envelope is opened

    common: dict[str, Any] = {
        "routing_key": str(delivery_info.get("routing_key") or ""),
        "exchange": str(delivery_info.get("exchange") or ""),
        "headers": dict(headers),
        "properties": dict(properties),
        "redelivered": bool(delivery_info.get("redelivered")),
    }

    if isinstance(data, dict) and OSLO_VERSION_KEY in data:
        data = unwrap(data)
        if isinstance(data, dict) and "method" in data:
            return _oslo_request(data, common)
        return Request(body=data, **common)

    if isinstance(data, dict) and "method" in data:
        return _amqp_request(data, properties, common)
    return Request(body=data, **common)


def _rpc_fields(msg: dict[str, Any]) -> tuple[str, dict[str, Any], str | None, str]:
    """method, args, namespace and version of a request body; raises Refused."""
    method = msg.get("method")
    args = msg.get("args")
    args = {} if args is None else args
    namespace = msg.get("namespace")
    version = msg.get("version") or "1.0"
    if not isinstance(method, str) or not method:
        raise Refused("method must be a non-empty string")
    if not isinstance(args, dict):
        raise Refused(f"args must be a JSON object, not {type(args).__name__}")
    if namespace is not None and not isinstance(namespace, str):
        raise Refused("namespace must be a string or null")
    if not isinstance(version, str):
        raise Refused("version must be a string")
    return method, args, namespace, version


def _oslo_request(msg: dict[str, Any], common: dict[str, Any]) -> Request | Rejected:
    msg_id = msg.get("_msg_id")
    reply_q = msg.get("_reply_q")
    route = None
    if msg_id is not None:
        if not isinstance(msg_id, str) or not isinstance(reply_q, str) or not reply_q:
            raise Refused("oslo call without a valid _msg_id/_reply_q")
        route = ReplyRoute("oslo", reply_q, msg_id=msg_id)
    try:
        method, args, namespace, version = _rpc_fields(msg)
    except Refused as exc:
        return Rejected(str(exc), route)
    timeout = msg.get("_timeout")
    monitor = None
    if route is not None and isinstance(timeout, int | float) and not isinstance(timeout, bool):
        if timeout > 0:
            monitor = float(timeout)
    context = {k[len(CONTEXT_PREFIX) :]: v for k, v in msg.items() if k.startswith(CONTEXT_PREFIX)}
    context["client_timeout"] = timeout if route is not None else None
    unique = msg.get("_unique_id")
    return Request(
        body=msg,
        method=method,
        args=args,
        context=context,
        namespace=namespace,
        version=version,
        reply=route,
        unique_id=unique if isinstance(unique, str) else None,
        monitor_timeout=monitor,
        **common,
    )


def _amqp_request(
    msg: dict[str, Any], properties: Mapping[str, Any], common: dict[str, Any]
) -> Request | Rejected:
    route = _amqp_route(properties)
    context = msg.get("context")
    context = {} if context is None else context
    try:
        method, args, namespace, version = _rpc_fields(msg)
        if not isinstance(context, dict):
            raise Refused(f"context must be a JSON object, not {type(context).__name__}")
    except Refused as exc:
        return Rejected(str(exc), route)
    mid = properties.get("message_id")
    return Request(
        body=msg,
        method=method,
        args=args,
        context=context,
        namespace=namespace,
        version=version,
        reply=route,
        unique_id=mid if isinstance(mid, str) else None,
        **common,
    )
