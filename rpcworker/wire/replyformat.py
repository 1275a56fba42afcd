"""Replies, both ways: encoded as a server sends them (a result, a failure as
oslo.messaging's ``serialize_remote_exception`` writes it, a call-monitor heartbeat) and
read as a caller reads them (``parse_reply``, ``ReplyWaiter``): ``rpcworker-client`` and
the test kit share that reader. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

from rpcworker.wire.decoding import ReplyRoute
from rpcworker.wire.envelope import OSLO_MESSAGE_KEY, dumps, envelope, loads


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


def encode_result(route: ReplyRoute, result: Any) -> Reply:
    """A success reply. Raises TypeError/ValueError when ``result`` is not JSON."""
    if route.style == "oslo":
        body = envelope(
            {
                "result": result,
                "failure": None,
                "ending": True,
                "_msg_id": route.msg_id,
                "_unique_id": uuid.uuid4().hex,
            }
        )
    else:
        body = dumps({"result": result}).encode("utf-8")
    return Reply(route.routing_key, body, route.correlation_id)


def encode_failure(route: ReplyRoute, exc: BaseException) -> Reply:
    return _failure_reply(route, failure_info(exc))


def encode_error(route: ReplyRoute, type_name: str, module: str, message: str) -> Reply:
    """An error reply for a request refused before dispatch."""
    return _failure_reply(
        route,
        {
            "class": type_name,
            "module": module,
            "message": message,
            "tb": [],
            "args": [message],
            "kwargs": {},
        },
    )


def _failure_reply(route: ReplyRoute, info: dict[str, Any]) -> Reply:
    if route.style == "oslo":
        body = envelope(
            {
                "result": None,
                "failure": dumps(info),
                "ending": True,
                "_msg_id": route.msg_id,
                "_unique_id": uuid.uuid4().hex,
            }
        )
    else:
        body = dumps(
            {"error": {"type": info["class"], "module": info["module"], "message": info["message"]}}
        ).encode("utf-8")
    return Reply(route.routing_key, body, route.correlation_id)


def encode_heartbeat(route: ReplyRoute) -> Reply:
    """oslo call-monitor heartbeat: ``ending: false`` and no result."""
    body = envelope(
        {
            "result": None,
            "failure": None,
            "ending": False,
            "_msg_id": route.msg_id,
            "_unique_id": uuid.uuid4().hex,
        }
    )
    return Reply(route.routing_key, body, None)


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
        name = (
            self.cls
            if self.module in ("", "builtins", "exceptions")
            else (f"{self.module}.{self.cls}")
        )
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
            info = {
                "class": error.get("type"),
                "module": error.get("module"),
                "message": error.get("message"),
            }
            return ParsedReply(
                failure=RemoteError(
                    str(info["class"] or "RemoteError"),
                    str(info["module"] or ""),
                    str(info["message"] or ""),
                    info=info,
                )
            )
        return ParsedReply(result=data.get("result"))
    failure = parse_failure(data["failure"]) if data.get("failure") else None
    msg_id = data.get("_msg_id")
    return ParsedReply(
        data.get("result"),
        failure,
        msg_id if isinstance(msg_id, str) else "",
        bool(data.get("ending")),
    )


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
