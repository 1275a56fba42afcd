from __future__ import annotations

import json
from typing import Any

import pytest

from rpcworker.wire import decoding, replyformat
from rpcworker.wire.decoding import Rejected, Request


def oslo(inner: dict[str, Any]) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


# the inner dicts captured from oslo.messaging 18.3.1 (reference section 2)
CALL = {
    "method": "echo",
    "args": {"x": 5},
    "version": "1.2",
    "_msg_id": "f633dbd5",
    "_reply_q": "reply_a1884108",
    "_timeout": None,
    "_unique_id": "4cb43c04",
    "_context_user_id": "u1",
    "_context_project_id": "p1",
    "_context_request_id": "req-abc",
}
CAST = {
    "method": "echo",
    "args": {"x": 6},
    "_unique_id": "e633ea1a",
    "_context_user_id": "u1",
    "_context_project_id": "p1",
    "_context_request_id": "req-abc",
}


def decode(body: bytes, **kw: Any) -> Request | Rejected:
    kw.setdefault("content_type", "application/json")
    kw.setdefault("content_encoding", "utf-8")
    return decoding.decode(body, **kw)


def test_oslo_call() -> None:
    req = decode(oslo(CALL), delivery_info={"routing_key": "T", "exchange": "openstack"})
    assert isinstance(req, Request)
    assert req.reply is not None and req.reply.style == "oslo" and req.is_call
    assert req.method == "echo"
    assert req.args == {"x": 5} and req.version == "1.2" and req.namespace is None
    assert req.reply == decoding.ReplyRoute("oslo", "reply_a1884108", msg_id="f633dbd5")
    assert req.context == {
        "user_id": "u1",
        "project_id": "p1",
        "request_id": "req-abc",
        "client_timeout": None,
    }
    assert req.unique_id == "4cb43c04" and req.monitor_timeout is None
    assert req.routing_key == "T" and req.exchange == "openstack"


def test_oslo_cast_and_monitor_timeout() -> None:
    req = decode(oslo(CAST))
    assert isinstance(req, Request) and req.is_rpc and req.reply is None and not req.is_call
    assert req.unique_id == CAST["_unique_id"]  # oslo's _unique_id, not a message_id
    assert req.version == "1.0"
    call = decode(oslo(dict(CALL, _timeout=2)))
    assert isinstance(call, Request) and call.monitor_timeout == 2.0
    assert call.context["client_timeout"] == 2


def test_plain_amqp_rpc() -> None:
    body = json.dumps({"method": "add", "args": {"a": 1}, "context": {"u": 1}}).encode()
    req = decode(
        body, properties={"reply_to": "amq.rabbitmq.reply-to.g1h", "correlation_id": "c-1"}
    )
    assert isinstance(req, Request) and req.reply is not None and req.reply.style == "amqp"
    assert req.reply == decoding.ReplyRoute(
        "amqp", "amq.rabbitmq.reply-to.g1h", correlation_id="c-1"
    )
    assert req.context == {"u": 1}
    cast = decode(body)
    assert isinstance(cast, Request) and cast.is_rpc and cast.reply is None


def test_events_are_not_rpc() -> None:
    req = decode(b'{"event_type": "x.y", "payload": {}}', delivery_info={"routing_key": "x.y"})
    assert isinstance(req, Request) and req.method is None and not req.is_rpc
    notification = decode(oslo({"event_type": "compute.instance.create", "payload": {"a": 1}}))
    assert isinstance(notification, Request) and notification.body["payload"] == {"a": 1}
    scalar = decode(b"[1, 2]")
    assert isinstance(scalar, Request) and scalar.body == [1, 2]


def test_missing_content_type_is_tried_as_json() -> None:
    assert isinstance(decode(b'{"a": 1}', content_type=None, content_encoding=None), Request)


@pytest.mark.parametrize(
    ("content_type", "content_encoding"),
    [
        ("application/json", "utf-8"),  # as oslo and kombu send it: taken as it comes
        ("", ""),
        ("Application/JSON; charset=utf-8", "UTF-8"),  # normalised first
        (" application/json ", "utf8 "),
    ],
)
def test_json_content_types_and_encodings_are_accepted(
    content_type: str, content_encoding: str
) -> None:
    decoded = decode(b'{"a": 1}', content_type=content_type, content_encoding=content_encoding)
    assert isinstance(decoded, Request) and decoded.body == {"a": 1}
    for body in (bytearray(b'{"a": 1}'), memoryview(b'{"a": 1}'), '{"a": 1}'):
        again = decode(body, content_type=content_type, content_encoding=content_encoding)
        assert isinstance(again, Request) and again.body == {"a": 1}


@pytest.mark.parametrize(
    "body, kw, words",
    [
        (b"\x80\x04\x95", {"content_type": "application/x-python-serialize"}, "content type"),
        (b'{"a": 1}', {"content_type": "application/x-yaml"}, "content type"),
        (b'{"a": 1}', {"content_encoding": "binary"}, "encoding"),
        (b'{"a": 1}', {"headers": {"compression": "application/x-gzip"}}, "compressed"),
        (b"\xff\xfe{}", {}, "UTF-8"),
        (b'{"method": "x", "args"', {}, "not JSON"),
        (b"NaN", {}, "NaN"),
        (json.dumps({"oslo.version": "3.0", "oslo.message": "{}"}).encode(), {}, "version"),
        (json.dumps({"oslo.version": "2.0", "oslo.message": {"a": 1}}).encode(), {}, "string"),
        (json.dumps({"oslo.version": "2.0", "oslo.message": "{bad"}).encode(), {}, "JSON"),
        (json.dumps({"method": 5}).encode(), {}, "method"),
        (json.dumps({"method": "m", "args": [1]}).encode(), {}, "args must be a JSON object"),
        (json.dumps({"method": "m", "context": "x"}).encode(), {}, "context"),
        (oslo({"method": "m", "args": "x"}), {}, "args"),
        (oslo({"method": "m", "_msg_id": "1"}), {}, "_reply_q"),
    ],
)
def test_refusals(body: bytes, kw: dict[str, Any], words: str) -> None:
    result = decode(body, **kw)
    assert isinstance(result, Rejected), result
    assert words in result.reason


def test_refusal_keeps_reply_route_for_calls() -> None:
    bad = oslo({"method": "m", "args": [1], "_msg_id": "m1", "_reply_q": "rq"})
    result = decode(bad)
    assert isinstance(result, Rejected) and result.reply is not None
    assert result.reply.routing_key == "rq"
    plain = decode(
        json.dumps({"method": "m", "args": 3}).encode(),
        properties={"reply_to": "q", "correlation_id": "c"},
    )
    assert isinstance(plain, Rejected) and plain.reply is not None


@pytest.mark.parametrize("body", [b"", b"\x00" * 10, b"{" * 100_000, "é".encode("latin-1")])
def test_decode_never_raises(body: bytes) -> None:
    assert isinstance(decode(body), Rejected | Request)


def _inner(reply: replyformat.Reply) -> dict[str, Any]:
    env = json.loads(reply.body)
    assert env["oslo.version"] == "2.0"
    return json.loads(env["oslo.message"])


def test_oslo_result_reply_shape() -> None:
    route = decoding.ReplyRoute("oslo", "reply_q1", msg_id="m1")
    reply = replyformat.encode_result(route, {"got": 5})
    inner = _inner(reply)
    assert reply.routing_key == "reply_q1"
    assert set(inner) == {"result", "failure", "ending", "_msg_id", "_unique_id"}
    assert inner["result"] == {"got": 5} and inner["failure"] is None
    assert inner["ending"] is True and inner["_msg_id"] == "m1"


def test_oslo_failure_reply_is_double_encoded() -> None:
    route = decoding.ReplyRoute("oslo", "reply_q1", msg_id="m1")
    try:
        raise ValueError("bad", 42)
    except ValueError as exc:
        reply = replyformat.encode_failure(route, exc)
    inner = _inner(reply)
    assert inner["result"] is None and inner["ending"] is True
    failure = json.loads(inner["failure"])
    assert failure["class"] == "ValueError" and failure["module"] == "builtins"
    assert failure["message"] == "('bad', 42)" and failure["args"] == ["bad", 42]
    assert failure["kwargs"] == {} and failure["tb"][0].startswith("Traceback")


def test_oslo_heartbeat_shape() -> None:
    inner = _inner(replyformat.encode_heartbeat(decoding.ReplyRoute("oslo", "q", msg_id="m")))
    assert inner["ending"] is False and inner["result"] is None and inner["failure"] is None


def test_amqp_replies() -> None:
    route = decoding.ReplyRoute("amqp", "rq", correlation_id="c9")
    ok = replyformat.encode_result(route, [1, 2])
    assert json.loads(ok.body) == {"result": [1, 2]} and ok.correlation_id == "c9"
    err = replyformat.encode_failure(route, KeyError("k"))
    assert json.loads(err.body) == {
        "error": {"type": "KeyError", "module": "builtins", "message": "'k'"}
    }


def test_non_json_result_raises_for_the_dispatcher() -> None:
    with pytest.raises(TypeError):
        replyformat.encode_result(decoding.ReplyRoute("amqp", "q"), object())


def test_body_over_max_size_is_refused_before_decoding() -> None:
    body = json.dumps({"method": "m", "pad": "x" * 2000}).encode()
    result = decoding.decode(body, "application/json", max_size=1024)
    assert isinstance(result, Rejected) and "max_message_size" in result.reason
    assert isinstance(decoding.decode(body, "application/json", max_size=len(body)), Request)
