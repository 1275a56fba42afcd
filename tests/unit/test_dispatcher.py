from __future__ import annotations

import json
from typing import Any

import pytest

import rpcworker
from rpcworker import dispatcher, protocol
from rpcworker.bindings import Binding
from rpcworker.dispatcher import Action

AFTER = Binding(name="b", type="rpc", handler="h", exchange="openstack", durable=False,
                prefetch_count=1, acknowledge="after", topic="t", server="s")
BEFORE = Binding(name="b", type="rpc", handler="h", exchange="openstack", durable=False,
                 prefetch_count=1, acknowledge="before", topic="t", server="s")
ROUTE = protocol.ReplyRoute("amqp", "rq", correlation_id="c")


class Target:
    namespace = "ns"
    version = "1.3"
    legacy_namespaces = ["old"]


class Handler:
    def __init__(self) -> None:
        self.events: list[rpcworker.Message] = []

    def add(self, ctxt: dict[str, Any], a: int, b: int) -> int:
        return a + b

    def boom(self, ctxt: dict[str, Any]) -> None:
        raise KeyError("boom")

    def reject(self, ctxt: dict[str, Any]) -> None:
        raise rpcworker.Reject("no")

    def requeue(self, ctxt: dict[str, Any]) -> None:
        raise rpcworker.Requeue("later")

    def unjson(self, ctxt: dict[str, Any]) -> object:
        return object()

    def _secret(self, ctxt: dict[str, Any]) -> str:
        return "leaked"

    attribute = "not callable"

    def handle_message(self, message: rpcworker.Message) -> None:
        self.events.append(message)


class Versioned(Handler):
    target = Target()


def req(method: str | None, call: bool = True, redelivered: bool = False,
        **kw: Any) -> protocol.Request:
    return protocol.Request(kind="x", body={}, method=method, reply=ROUTE if call else None,
                            redelivered=redelivered, **kw)


def error_type(outcome: dispatcher.Outcome) -> str:
    assert outcome.reply is not None
    return str(json.loads(outcome.reply.body)["error"]["type"])


def test_success_acks_and_replies() -> None:
    out = dispatcher.dispatch(Handler(), AFTER, req("add", args={"a": 1, "b": 2}))
    assert out.action is Action.ACK and out.reply is not None
    assert json.loads(out.reply.body) == {"result": 3}
    cast = dispatcher.dispatch(Handler(), AFTER, req("add", call=False, args={"a": 1, "b": 2}))
    assert cast == dispatcher.Outcome(Action.ACK, None)


def test_exception_on_call_acks_with_error_on_cast_rejects() -> None:
    out = dispatcher.dispatch(Handler(), AFTER, req("boom"))
    assert out.action is Action.ACK and error_type(out) == "KeyError"
    cast = dispatcher.dispatch(Handler(), AFTER, req("boom", call=False))
    assert cast.action is Action.REJECT and cast.reply is None


def test_reject_and_bounded_requeue() -> None:
    assert dispatcher.dispatch(Handler(), AFTER, req("reject")).action is Action.REJECT
    first = dispatcher.dispatch(Handler(), AFTER, req("requeue"))
    assert first.action is Action.REQUEUE and first.reply is None
    again = dispatcher.dispatch(Handler(), AFTER, req("requeue", redelivered=True))
    assert again.action is Action.REJECT and error_type(again) == "Requeue"


def test_acknowledge_before_never_acts_after() -> None:
    for method in ("add", "boom", "reject", "requeue", "nope"):
        out = dispatcher.dispatch(Handler(), BEFORE, req(method, args={"a": 1, "b": 2}
                                                         if method == "add" else {}))
        assert out.action is Action.NONE, method
        assert out.reply is not None
    assert dispatcher.ack_on_receipt(BEFORE) and not dispatcher.ack_on_receipt(AFTER)


@pytest.mark.parametrize("method", ["nope", "_secret", "__init__", "attribute",
                                    "handle_message", "__class__"])
def test_no_such_method(method: str) -> None:
    out = dispatcher.dispatch(Handler(), AFTER, req(method))
    assert out.action is Action.ACK and error_type(out) == "NoSuchMethod"
    assert dispatcher.dispatch(Handler(), AFTER, req(method, call=False)).action is Action.REJECT


def test_oslo_failure_module_for_dispatch_errors() -> None:
    route = protocol.ReplyRoute("oslo", "rq", msg_id="m")
    out = dispatcher.dispatch(Handler(), AFTER, protocol.Request(kind="x", body={},
                                                                 method="nope", reply=route))
    assert out.reply is not None
    inner = json.loads(json.loads(out.reply.body)["oslo.message"])
    failure = json.loads(inner["failure"])
    assert failure["class"] == "NoSuchMethod"
    assert failure["module"] == "oslo_messaging.rpc.dispatcher"
    assert failure["message"] == "Endpoint does not support RPC method nope"


@pytest.mark.parametrize("namespace, version, ok", [
    ("ns", "1.0", True), ("ns", "1.3", True), ("ns", "1.2.5", True), ("old", "1.1", True),
    ("ns", "1.4", False), ("ns", "2.0", False), ("ns", "0.9", False), (None, "1.0", False),
    ("other", "1.0", False), ("ns", "bad", False), ("ns", "1", False),
])
def test_version_and_namespace_rules(namespace: str | None, version: str, ok: bool) -> None:
    out = dispatcher.dispatch(Versioned(), AFTER, req("add", namespace=namespace,
                                                      version=version, args={"a": 1, "b": 1}))
    assert out.reply is not None
    body = json.loads(out.reply.body)
    if ok:
        assert body == {"result": 2}
    else:
        assert body["error"]["type"] == "UnsupportedVersion"
        assert f"does not support RPC version {version}" in body["error"]["message"]


def test_handler_without_target_is_namespace_none_version_1_0() -> None:
    assert json.loads(dispatcher.dispatch(Handler(), AFTER, req(
        "add", version="1.0", args={"a": 0, "b": 0})).reply.body) == {"result": 0}  # type: ignore[union-attr]
    out = dispatcher.dispatch(Handler(), AFTER, req("add", version="1.1"))
    assert error_type(out) == "UnsupportedVersion"


def test_wrong_arguments_are_a_remote_type_error() -> None:
    out = dispatcher.dispatch(Handler(), AFTER, req("add", args={"a": 1}))
    assert out.action is Action.ACK and error_type(out) == "TypeError"


def test_unserialisable_result_becomes_failure() -> None:
    out = dispatcher.dispatch(Handler(), AFTER, req("unjson"))
    assert out.action is Action.ACK and error_type(out) == "TypeError"


def test_events_go_to_handle_message() -> None:
    h = Handler()
    out = dispatcher.dispatch(h, AFTER, protocol.Request(kind="event", body={"e": 1},
                                                         routing_key="a.b", exchange="ex"))
    assert out == dispatcher.Outcome(Action.ACK, None)
    assert h.events[0].body == {"e": 1} and h.events[0].routing_key == "a.b"


def test_event_without_handle_message_is_rejected() -> None:
    class NoEvents:
        pass
    out = dispatcher.dispatch(NoEvents(), AFTER, protocol.Request(kind="event", body={}))
    assert out.action is Action.REJECT


def test_refused_delivery() -> None:
    out = dispatcher.refused(AFTER, protocol.Rejected("args must be a JSON object", ROUTE))
    assert out.action is Action.REJECT and error_type(out) == "InvalidRequest"
    assert dispatcher.refused(AFTER, protocol.Rejected("x")).reply is None
