"""Wire formats in and out: oslo.messaging envelope 2.0, plain AMQP RPC, events.

Pure functions over bytes and properties, so they can be tested (and fuzzed)
without a broker. ``decode`` never raises: it returns a ``Request`` or a
``Rejected`` with the reason. Replies are encoded here (``encode_result``,
``encode_failure``, ...) and read here as a caller reads them (``parse_reply``,
``ReplyWaiter``): ``rpcworker-client`` and the test kit share that reader.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

OSLO_VERSION_KEY = "oslo.version"
OSLO_MESSAGE_KEY = "oslo.message"
OSLO_VERSION = "2.0"
CONTEXT_PREFIX = "_context_"
JSON = "application/json"

_ACCEPTED_TYPES = ("", JSON)
_ACCEPTED_ENCODINGS = ("", "utf-8", "utf8")

@dataclasses.dataclass(frozen=True)
class ReplyRoute:
    """Where and how the answer to a call goes."""

    style: str  # "oslo" | "amqp"
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


class _Refused(Exception):
    pass


def _no_constants(name: str) -> Any:
    raise _Refused(f"JSON constant {name} is not allowed")


#: one decoder for every message (json.loads with arguments builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def loads(text: str) -> Any:
    """Strict JSON: NaN and Infinity are refused, and so is nesting deeper than the
    interpreter's recursion limit (ValueError)."""
    try:
        return _DECODER.decode(text)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


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
            raise _Refused(f"body of {len(body)} bytes is over max_message_size ({max_size})")
        return _decode(body, content_type, content_encoding, headers or {},
                       properties or {}, delivery_info or {})
    except _Refused as exc:
        return Rejected(str(exc), _amqp_route(properties or {}))
    except Exception as exc:  # defensive: decode must never take the loop down
        return Rejected(f"cannot decode: {type(exc).__name__}: {exc}", None)


def as_notification(request: Request) -> Request | Rejected:
    """``request`` (decoded for a notification binding) read as an oslo notification:
    the envelope 2.0 is already unwrapped, a bare 1.0 message is the same dict. Its
    ``message_id`` becomes the request's id (duplicate suppression)."""
    body = request.body
    if not isinstance(body, dict) or request.method is not None:
        return Rejected("not an oslo notification: "
                        + ("an RPC request" if request.method is not None else
                           f"the body is a JSON {type(body).__name__}, not an object"))
    priority = body.get("priority")
    context = {k[len(CONTEXT_PREFIX):]: v for k, v in body.items()
               if k.startswith(CONTEXT_PREFIX)}
    message_id = body.get("message_id")
    notification = Notification(
        priority=priority.lower() if isinstance(priority, str) else "",
        publisher_id=body.get("publisher_id"), event_type=body.get("event_type"),
        payload=body.get("payload"),
        metadata={"message_id": message_id, "timestamp": body.get("timestamp")},
        context=context)
    return dataclasses.replace(
        request, notification=notification,
        unique_id=message_id if isinstance(message_id, str) and message_id else None)


def _amqp_route(properties: Mapping[str, Any]) -> ReplyRoute | None:
    reply_to = properties.get("reply_to")
    if isinstance(reply_to, str) and reply_to:
        corr = properties.get("correlation_id")
        return ReplyRoute("amqp", reply_to, correlation_id=corr if isinstance(corr, str) else None)
    return None


def _decode(body: bytes | str, content_type: str | None, content_encoding: str | None,
            headers: Mapping[str, Any], properties: Mapping[str, Any],
            delivery_info: Mapping[str, Any]) -> Request | Rejected:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in _ACCEPTED_TYPES:
        raise _Refused(f"content type {content_type!r} refused: only {JSON} is accepted")
    cenc = (content_encoding or "").strip().lower()
    if cenc not in _ACCEPTED_ENCODINGS:
        raise _Refused(f"content encoding {content_encoding!r} refused: only utf-8 is accepted")
    if headers.get("compression"):
        raise _Refused(f"compressed bodies ({headers.get('compression')!r}) are refused")
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Refused(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    elif isinstance(body, str):
        text = body
    else:
        raise _Refused(f"body of type {type(body).__name__} refused")
    try:
        data = loads(text)
    except ValueError as exc:
        raise _Refused(f"body is not JSON: {exc}") from None
    del text  # a copy of the body as large as it: not held while the envelope is opened

    common: dict[str, Any] = {
        "routing_key": str(delivery_info.get("routing_key") or ""),
        "exchange": str(delivery_info.get("exchange") or ""),
        "headers": dict(headers),
        "properties": dict(properties),
        "redelivered": bool(delivery_info.get("redelivered")),
    }

    if isinstance(data, dict) and OSLO_VERSION_KEY in data:
        data = _unwrap_oslo(data)
        if isinstance(data, dict) and "method" in data:
            return _oslo_request(data, common)
        return Request(body=data, **common)

    if isinstance(data, dict) and "method" in data:
        return _amqp_request(data, properties, common)
    return Request(body=data, **common)


def _unwrap_oslo(data: dict[str, Any]) -> Any:
    version = data.get(OSLO_VERSION_KEY)
    if not isinstance(version, str):
        raise _Refused("oslo envelope: oslo.version is not a string")
    major, _, minor = version.partition(".")
    if major != "2" or not minor.isdigit() or int(minor) > 0:
        raise _Refused(f"oslo envelope version {version!r} not supported (2.0 is)")
    inner = data.get(OSLO_MESSAGE_KEY)
    if not isinstance(inner, str):
        raise _Refused("oslo envelope: oslo.message is not a JSON string")
    try:
        return loads(inner)
    except ValueError as exc:
        raise _Refused(f"oslo envelope: oslo.message is not JSON: {exc}") from None


def _rpc_fields(msg: dict[str, Any]) -> tuple[str, dict[str, Any], str | None, str]:
    """method, args, namespace and version of a request body; raises _Refused."""
    method = msg.get("method")
    args = msg.get("args")
    args = {} if args is None else args
    namespace = msg.get("namespace")
    version = msg.get("version") or "1.0"
    if not isinstance(method, str) or not method:
        raise _Refused("method must be a non-empty string")
    if not isinstance(args, dict):
        raise _Refused(f"args must be a JSON object, not {type(args).__name__}")
    if namespace is not None and not isinstance(namespace, str):
        raise _Refused("namespace must be a string or null")
    if not isinstance(version, str):
        raise _Refused("version must be a string")
    return method, args, namespace, version


def _oslo_request(msg: dict[str, Any], common: dict[str, Any]) -> Request | Rejected:
    msg_id = msg.get("_msg_id")
    reply_q = msg.get("_reply_q")
    route = None
    if msg_id is not None:
        if not isinstance(msg_id, str) or not isinstance(reply_q, str) or not reply_q:
            raise _Refused("oslo call without a valid _msg_id/_reply_q")
        route = ReplyRoute("oslo", reply_q, msg_id=msg_id)
    try:
        method, args, namespace, version = _rpc_fields(msg)
    except _Refused as exc:
        return Rejected(str(exc), route)
    timeout = msg.get("_timeout")
    monitor = None
    if route is not None and isinstance(timeout, int | float) and not isinstance(timeout, bool):
        if timeout > 0:
            monitor = float(timeout)
    context = {k[len(CONTEXT_PREFIX):]: v for k, v in msg.items() if k.startswith(CONTEXT_PREFIX)}
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


def _amqp_request(msg: dict[str, Any], properties: Mapping[str, Any],
                  common: dict[str, Any]) -> Request | Rejected:
    route = _amqp_route(properties)
    context = msg.get("context")
    context = {} if context is None else context
    try:
        method, args, namespace, version = _rpc_fields(msg)
        if not isinstance(context, dict):
            raise _Refused(f"context must be a JSON object, not {type(context).__name__}")
    except _Refused as exc:
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


def oslo_request(method: str, args: Mapping[str, Any], context: Mapping[str, Any] | None = None,
                 *, namespace: str | None = None, version: str | None = None,
                 msg_id: str | None = None, reply_q: str | None = None,
                 timeout: float | None = None, unique_id: str | None = None) -> dict[str, Any]:
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


def oslo_notification(priority: str, event_type: str, payload: Any,
                      publisher_id: str, context: Mapping[str, Any] | None = None,
                      message_id: str | None = None) -> dict[str, Any]:
    """The inner dict of a notification as oslo.messaging's ``Notifier`` builds it
    (``notify/notifier.py`` ``_notify``; the priority in capitals, the context packed
    as ``_context_*``); send it wrapped by ``envelope`` with routing key
    ``TOPIC.priority``."""
    msg: dict[str, Any] = {
        "message_id": message_id or str(uuid.uuid4()), "publisher_id": publisher_id,
        "event_type": event_type, "priority": priority.upper(), "payload": payload,
        "timestamp": str(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)),
    }
    for key, value in (context or {}).items():
        msg[f"{CONTEXT_PREFIX}{key}"] = value
    return msg


# -- replies ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    """A reply ready to publish on the default exchange."""

    routing_key: str
    body: bytes
    correlation_id: str | None = None


def failure_info(exc: BaseException) -> dict[str, Any]:
    """oslo.messaging's ``serialize_remote_exception`` fields for ``exc``."""
    cls = type(exc)
    name = cls.__name__
    if name.endswith("_Remote"):
        name = name[: -len("_Remote")]
    module = getattr(cls, "wire_module", None) or cls.__module__
    if module.endswith("_Remote"):
        module = module[: -len("_Remote")]
    return {
        "class": name,
        "module": module,
        "message": str(exc),
        "tb": traceback.format_exception(cls, exc, exc.__traceback__),
        "args": [_plain(a) for a in exc.args],
        "kwargs": _plain(getattr(exc, "kwargs", {}) or {}),
    }


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def envelope(inner: Mapping[str, Any]) -> bytes:
    """oslo.messaging envelope 2.0: ``inner`` as a JSON string in ``oslo.message``."""
    return json.dumps(
        {OSLO_VERSION_KEY: OSLO_VERSION, OSLO_MESSAGE_KEY: _dumps(inner)}
    ).encode("utf-8")


def encode_result(route: ReplyRoute, result: Any) -> Reply:
    """A success reply. Raises TypeError/ValueError when ``result`` is not JSON."""
    if route.style == "oslo":
        body = envelope({"result": result, "failure": None, "ending": True,
                               "_msg_id": route.msg_id, "_unique_id": uuid.uuid4().hex})
    else:
        body = _dumps({"result": result}).encode("utf-8")
    return Reply(route.routing_key, body, route.correlation_id)


def encode_failure(route: ReplyRoute, exc: BaseException) -> Reply:
    return _failure_reply(route, failure_info(exc))


def encode_error(route: ReplyRoute, type_name: str, module: str, message: str) -> Reply:
    """An error reply for a request refused before dispatch."""
    return _failure_reply(route, {"class": type_name, "module": module, "message": message,
                                  "tb": [], "args": [message], "kwargs": {}})


def _failure_reply(route: ReplyRoute, info: dict[str, Any]) -> Reply:
    if route.style == "oslo":
        body = envelope({"result": None, "failure": _dumps(info), "ending": True,
                               "_msg_id": route.msg_id, "_unique_id": uuid.uuid4().hex})
    else:
        body = _dumps({"error": {"type": info["class"], "module": info["module"],
                                 "message": info["message"]}}).encode("utf-8")
    return Reply(route.routing_key, body, route.correlation_id)


def encode_heartbeat(route: ReplyRoute) -> Reply:
    """oslo call-monitor heartbeat: ``ending: false`` and no result."""
    body = envelope({"result": None, "failure": None, "ending": False,
                           "_msg_id": route.msg_id, "_unique_id": uuid.uuid4().hex})
    return Reply(route.routing_key, body, None)


# -- replies, as the caller reads them -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RemoteError:
    """The failure a server sent back for a call: oslo's ``serialize_remote_exception``
    fields (``info``), or a plain AMQP RPC reply's ``error`` (type, module, message)."""

    cls: str
    module: str
    message: str
    traceback: tuple[str, ...] = ()
    #: the fields as they came (oslo: class, module, message, tb, args, kwargs)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def line(self) -> str:
        """``module.Class: message`` (builtins without the module)."""
        name = self.cls if self.module in ("", "builtins", "exceptions") else (
            f"{self.module}.{self.cls}")
        return f"{name}: {self.message}"


def parse_failure(failure: Any) -> RemoteError:
    """``failure`` as oslo sends it (a JSON string), or already a dict."""
    data = failure
    if isinstance(failure, str):
        try:
            data = loads(failure)
        except ValueError:
            return RemoteError("RemoteError", "", failure, info={"message": failure})
    if not isinstance(data, dict):
        return RemoteError("RemoteError", "", str(data), info={"message": str(data)})
    tb = data.get("tb") or []
    return RemoteError(
        cls=str(data.get("class") or "RemoteError"),
        module=str(data.get("module") or ""),
        message=str(data.get("message", "")),
        traceback=tuple(str(line) for line in tb) if isinstance(tb, list) else (),
        info=data,
    )


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    """One reply message: an oslo reply (``msg_id`` set; ``ending`` false for a
    call-monitor heartbeat or a pre-4.0 partial result) or a plain AMQP RPC reply."""

    result: Any = None
    failure: RemoteError | None = None
    msg_id: str | None = None
    ending: bool = True


def parse_reply(body: bytes | str) -> ParsedReply | None:
    """Read a reply body; None when it is neither an oslo nor a plain AMQP RPC reply."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        data = loads(text)
        oslo = isinstance(data, dict) and OSLO_MESSAGE_KEY in data
        if oslo:
            data = loads(data[OSLO_MESSAGE_KEY])
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if not oslo:
        error = data.get("error")
        if isinstance(error, dict):
            info = {"class": error.get("type"), "module": error.get("module"),
                    "message": error.get("message")}
            return ParsedReply(failure=RemoteError(
                str(info["class"] or "RemoteError"), str(info["module"] or ""),
                str(info["message"] or ""), info=info))
        return ParsedReply(result=data.get("result"))
    failure = parse_failure(data["failure"]) if data.get("failure") else None
    msg_id = data.get("_msg_id")
    return ParsedReply(data.get("result"), failure, msg_id if isinstance(msg_id, str) else "",
                       bool(data.get("ending")))


class ReplyWaiter:
    """Collects the replies to one oslo call, with oslo.messaging 18's client rules.

    Replies for another ``_msg_id`` are dropped; ``ending: false`` without a
    result is a call-monitor heartbeat; a truthy ``ending`` or a failure ends
    the call, keeping the last non-null result (so the pre-4.0 two-message
    form works too).
    """

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        self.done = False
        self.result: Any = None
        self.failure: RemoteError | None = None
        self.last_heard = time.monotonic()

    def feed(self, body: bytes | str) -> bool:
        """Take one reply body; True once the call is complete."""
        reply = parse_reply(body)
        if reply is None or reply.msg_id != self.msg_id:
            return self.done
        self.last_heard = time.monotonic()
        if reply.failure is not None:
            self.failure = reply.failure
            self.done = True
        elif reply.result is not None:
            self.result = reply.result
        if reply.ending:
            self.done = True
        return self.done
