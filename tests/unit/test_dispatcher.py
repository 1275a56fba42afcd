from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import pytest

import rpcworker
from rpcworker.config.bindingconf import Binding
from rpcworker.engine.inflight import run
from rpcworker.errors import NoSuchMethod
from rpcworker.policy import decisions, dispatcher
from rpcworker.policy.decisions import Action
from rpcworker.policy.dedup import CompletedCache
from rpcworker.wire import decoding, replyformat, xheaders

AFTER = Binding(name="b", type="rpc", handler="h", exchange="openstack", durable=False,
                prefetch_count=1, acknowledge="after", topic="t", server="s")
BEFORE = Binding(name="b", type="rpc", handler="h", exchange="openstack", durable=False,
                 prefetch_count=1, acknowledge="before", topic="t", server="s")
ROUTE = decoding.ReplyRoute("amqp", "rq", correlation_id="c")


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
        **kw: Any) -> decoding.Request:
    return decoding.Request(body={}, method=method, reply=ROUTE if call else None,
                            redelivered=redelivered, **kw)


def unknown_method(handler: Any, binding: Binding, request: decoding.Request
                   ) -> decisions.Outcome | None:
    """What the policy decides on receipt for a method the handler may not have."""
    error = dispatcher.unknown(handler, request)
    return None if error is None else decisions.unknown_method(request, error)


def error_type(outcome: decisions.Outcome) -> str:
    assert outcome.reply is not None
    return str(json.loads(outcome.reply.body)["error"]["type"])


def test_success_acks_and_replies() -> None:
    out = run(Handler(), AFTER, req("add", args={"a": 1, "b": 2}))
    assert out.action is Action.ACK and out.reply is not None
    assert json.loads(out.reply.body) == {"result": 3}
    cast = run(Handler(), AFTER, req("add", call=False, args={"a": 1, "b": 2}))
    assert cast == decisions.Outcome(Action.ACK, None)


RETRYING = dataclasses.replace(AFTER, max_retries=2)


def test_exception_on_call_acks_with_error_on_cast_retries_then_dead_letters() -> None:
    out = run(Handler(), RETRYING, req("boom"))
    assert out.action is Action.ACK and error_type(out) == "KeyError"
    cast = run(Handler(), RETRYING, req("boom", call=False))
    assert cast.action is Action.RETRY and cast.reply is None
    assert cast.reason == "KeyError: 'boom'"
    last = run(Handler(), RETRYING, req("boom", call=False,
                                                        headers={xheaders.RETRIES_HEADER: 2}))
    assert last.action is Action.DEAD_LETTER
    no_retries = run(Handler(), AFTER, req("boom", call=False))
    assert no_retries.action is Action.DEAD_LETTER


def test_reject_dead_letters_at_once_and_requeue_is_a_bounded_retry() -> None:
    rejected = run(Handler(), RETRYING, req("reject", call=False))
    assert rejected.action is Action.DEAD_LETTER and "Reject" in (rejected.reason or "")
    call = run(Handler(), RETRYING, req("reject"))
    assert call.action is Action.DEAD_LETTER and error_type(call) == "Reject"
    first = run(Handler(), RETRYING, req("requeue", call=False))
    assert first.action is Action.RETRY and first.reply is None
    spent = run(Handler(), RETRYING, req(
        "requeue", call=False, headers={xheaders.RETRIES_HEADER: "2"}))
    assert spent.action is Action.DEAD_LETTER


def test_poison_messages_on_classic_queues_are_counted_then_dead_lettered() -> None:
    b = dataclasses.replace(AFTER, max_redeliveries=2)
    assert decisions.redelivered(b, req("add", call=False)) is None  # not redelivered
    first = decisions.redelivered(b, req("add", call=False, redelivered=True))
    assert first is not None and first.action is Action.COUNT
    second = decisions.redelivered(b, req("add", call=False, redelivered=True,
                                          headers={xheaders.REDELIVERIES_HEADER: 1}))
    assert second is not None and second.action is Action.COUNT
    third = decisions.redelivered(b, req("add", redelivered=True,
                                         headers={xheaders.REDELIVERIES_HEADER: 2}))
    assert third is not None and third.action is Action.DEAD_LETTER
    assert error_type(third) == "PoisonMessage"
    assert decisions.redelivered(dataclasses.replace(b, max_redeliveries=0),
                                 req("add", redelivered=True)) is None


def test_poison_messages_on_quorum_queues_use_the_delivery_count() -> None:
    b = dataclasses.replace(AFTER, max_redeliveries=3, queue_arguments={"x-queue-type": "quorum"})
    ok = decisions.redelivered(b, req("add", call=False, redelivered=True,
                                      headers={"x-delivery-count": 3}))
    assert ok is None
    poison = decisions.redelivered(b, req("add", call=False, redelivered=True,
                                          headers={"x-delivery-count": 4}))
    assert poison is not None and poison.action is Action.DEAD_LETTER


def quorum(max_redeliveries: int, delivery_limit: int) -> Binding:
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    if delivery_limit:
        args["x-delivery-limit"] = delivery_limit
    return dataclasses.replace(AFTER, max_redeliveries=max_redeliveries, queue_arguments=args)


def delivered(b: Binding, count: int, call: bool = False) -> decisions.Outcome | None:
    return decisions.redelivered(b, req("add", call=call, redelivered=count > 0,
                                        headers={"x-delivery-count": count}))


@pytest.mark.parametrize("max_redeliveries, limit, runs, by_limit", [
    # the broker delivers x-delivery-count 0..L, then drops the message: count L is
    # never run, so at most L runs (counts 0..L-1), fewer when max_redeliveries says so
    (10, 3, 3, True),   # max_redeliveries bigger: the delivery limit bounds it
    (0, 3, 3, True),    # max_redeliveries off
    (1, 3, 2, False),   # max_redeliveries smaller: it bounds, as without a limit
    (2, 3, 3, False),   # equal bounds (L - 1 == max_redeliveries)
    (0, 1, 1, True),    # L = 1: the one redelivery the broker makes is not run
    (2, 0, 3, False),   # no delivery_limit: max_redeliveries as before
])
def test_quorum_delivery_limit_boundaries(max_redeliveries: int, limit: int, runs: int,
                                          by_limit: bool) -> None:
    b = quorum(max_redeliveries, limit)
    for count in range(runs):  # these deliveries run
        assert delivered(b, count) is None, count
    last = delivered(b, runs)
    assert last is not None and last.action is Action.DEAD_LETTER
    assert ("delivery limit" in (last.reason or "")) is by_limit
    beyond = delivered(b, runs + 1)  # the broker never sends it with a limit: still parked
    assert beyond is not None and beyond.action is Action.DEAD_LETTER


def test_quorum_delivery_limit_counts_l_minus_1_l_l_plus_1() -> None:
    b = quorum(10, 2)
    assert delivered(b, 1) is None  # L - 1: run
    at_limit = delivered(b, 2, call=True)  # L: the broker's last delivery
    assert at_limit is not None and at_limit.action is Action.DEAD_LETTER
    assert error_type(at_limit) == "PoisonMessage"
    assert "x-delivery-count 2" in (at_limit.reason or "")
    assert "delivery_limit 2" in (at_limit.reason or "")
    assert delivered(b, 3) is not None  # L + 1
    assert delivered(quorum(0, 0), 50) is None  # no bound at all
    assert decisions.redelivered(dataclasses.replace(b, acknowledge="before"),
                                 req("add", redelivered=True,
                                     headers={"x-delivery-count": 5})) is None


def test_quorum_binding_without_delivery_count_counts_like_a_classic_queue() -> None:
    """An rpc quorum binding's fanout queue is classic: no x-delivery-count there."""
    b = quorum(2, 3)
    first = decisions.redelivered(b, req("add", call=False, redelivered=True))
    assert first is not None and first.action is Action.COUNT
    assert decisions.redelivered(quorum(0, 3), req("add", redelivered=True)) is None


def test_timeout_and_duplicates() -> None:
    b = dataclasses.replace(RETRYING, handler_timeout=2.5)
    cast = decisions.timed_out(b, req("add", call=False))
    assert cast.action is Action.RETRY and "HandlerTimeout" in (cast.reason or "")
    call = decisions.timed_out(b, req("add"))
    assert call.action is Action.ACK and error_type(call) == "HandlerTimeout"
    reply = replyformat.Reply("rq", b"{}")
    assert decisions.duplicate(reply) == decisions.Outcome(Action.ACK, reply)


def test_acknowledge_before_never_acts_after() -> None:
    for method in ("add", "boom", "reject", "requeue", "nope"):
        out = run(Handler(), BEFORE, req(method, args={"a": 1, "b": 2}
                                                         if method == "add" else {}))
        assert out.action is Action.NONE, method
        assert out.reply is not None
    add = req("add", args={"a": 1, "b": 2})
    assert decisions.on_receipt(BEFORE, add, Handler(), CompletedCache(0),
                             draining=False) is decisions.ACK_THEN_RUN
    assert decisions.on_receipt(AFTER, add, Handler(), CompletedCache(0),
                             draining=False) is decisions.RUN


@pytest.mark.parametrize("method", ["nope", "_secret", "__init__", "attribute",
                                    "handle_message", "__class__"])
def test_no_such_method(method: str) -> None:
    out = run(Handler(), AFTER, req(method))
    assert out.action is Action.ACK and error_type(out) == "NoSuchMethod"
    cast = run(Handler(), RETRYING, req(method, call=False))
    assert cast.action is Action.DEAD_LETTER  # retrying cannot help


def test_oslo_failure_module_for_dispatch_errors() -> None:
    route = decoding.ReplyRoute("oslo", "rq", msg_id="m")
    out = run(Handler(), AFTER, decoding.Request(body={},
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
    out = run(Versioned(), AFTER, req("add", namespace=namespace,
                                                      version=version, args={"a": 1, "b": 1}))
    assert out.reply is not None
    body = json.loads(out.reply.body)
    if ok:
        assert body == {"result": 2}
    else:
        assert body["error"]["type"] == "UnsupportedVersion"
        assert f"does not support RPC version {version}" in body["error"]["message"]


def test_handler_without_target_is_namespace_none_version_1_0() -> None:
    assert json.loads(run(Handler(), AFTER, req(
        "add", version="1.0", args={"a": 0, "b": 0})).reply.body) == {"result": 0}  # type: ignore[union-attr]
    out = run(Handler(), AFTER, req("add", version="1.1"))
    assert error_type(out) == "UnsupportedVersion"


def test_wrong_arguments_are_a_remote_type_error() -> None:
    out = run(Handler(), AFTER, req("add", args={"a": 1}))
    assert out.action is Action.ACK and error_type(out) == "TypeError"


def test_unserialisable_result_becomes_failure() -> None:
    out = run(Handler(), AFTER, req("unjson"))
    assert out.action is Action.ACK and error_type(out) == "TypeError"


def test_events_go_to_handle_message() -> None:
    h = Handler()
    out = run(h, AFTER, decoding.Request(body={"e": 1},
                                                         routing_key="a.b", exchange="ex"))
    assert out == decisions.Outcome(Action.ACK, None)
    assert h.events[0].body == {"e": 1} and h.events[0].routing_key == "a.b"


def test_event_without_handle_message_is_rejected() -> None:
    class NoEvents:
        pass
    out = run(NoEvents(), AFTER, decoding.Request(body={}))
    assert out.action is Action.DEAD_LETTER


def test_refused_delivery() -> None:
    out = decisions.refused(AFTER, decoding.Rejected("args must be a JSON object", ROUTE))
    assert out.action is Action.DEAD_LETTER and error_type(out) == "InvalidRequest"
    assert decisions.refused(AFTER, decoding.Rejected("x")).reply is None


# -- only public methods of the handler's class are callable (security audit) -----------


class Callable_:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a callable attribute was called")


class Attributes(Handler):
    """Attributes a message must never reach, next to real methods."""

    nested = Callable_  # a class: callable
    helper = Callable_()  # a callable object on the class

    def __init__(self) -> None:
        super().__init__()
        self.conf = Callable_()  # plugins keep their ConfigOpts, which is callable

    @property
    def prop(self) -> Any:
        raise AssertionError("a property was evaluated")

    @functools.cached_property
    def cached(self) -> Any:  # a non-data descriptor: __get__ would run it
        raise AssertionError("a cached_property was evaluated")

    @staticmethod
    def static(ctxt: dict[str, Any]) -> str:
        return "static"

    @classmethod
    def klass(cls, ctxt: dict[str, Any]) -> str:
        return cls.__name__


class DictHandler(dict):  # type: ignore[type-arg]
    def ping(self, ctxt: dict[str, Any]) -> str:
        return "pong"


@pytest.mark.parametrize("method", ["conf", "nested", "helper", "prop", "cached", "attribute",
                                    "events", "mro", "ok\n2024-01-01 CRITICAL forged", "a b",
                                    "add.x", ""])
def test_only_methods_defined_in_the_class_body_are_callable(method: str) -> None:
    with pytest.raises(NoSuchMethod):
        dispatcher.find_method(Attributes(), req(method))
    out = run(Attributes(), AFTER, req(method))
    assert out.action is Action.ACK and error_type(out) == "NoSuchMethod"


def test_static_and_class_methods_are_methods() -> None:
    assert json.loads(run(Attributes(), AFTER, req("static")).reply.body) \
        == {"result": "static"}  # type: ignore[union-attr]
    assert json.loads(run(Attributes(), AFTER, req("klass")).reply.body) \
        == {"result": "Attributes"}  # type: ignore[union-attr]
    assert dispatcher.find_method(Attributes(), req("add"))(None, a=1, b=2) == 3  # inherited


def test_attributes_of_builtin_bases_are_not_methods() -> None:
    h = DictHandler()
    assert dispatcher.find_method(h, req("ping"))({}) == "pong"
    for name in ("keys", "clear", "pop", "update", "fromkeys"):
        with pytest.raises(NoSuchMethod):
            dispatcher.find_method(h, req(name))


def test_the_builtin_handlers_never_expose_their_conf() -> None:
    """`conf` is a ConfigOpts: calling it clears and re-reads the configuration from any
    file the message names (and its parse error quotes the file to the caller)."""
    from oslo_config import cfg

    from rpcworker.handlers.echo import EchoHandler
    from rpcworker.handlers.log import LogHandler

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt("marker", default="untouched"))
    conf([], default_config_files=[])
    attack = req("conf", args={"default_config_files": ["/etc/hostname"], "project": "x"})
    for handler in (EchoHandler(conf), LogHandler(conf)):
        with pytest.raises(NoSuchMethod):
            dispatcher.find_method(handler, attack)
        out = run(handler, AFTER, attack)
        assert error_type(out) == "NoSuchMethod"
    assert conf.marker == "untouched" and conf.config_file == []
    # what they do serve still works; the log handler answers any other public name
    assert dispatcher.find_method(EchoHandler(conf), req("ping"))({}) == "pong"
    assert dispatcher.find_method(LogHandler(conf), req("anything"))({}, x=1) is None
    for name in ("_x", "target", "handle_message", "a-b"):
        with pytest.raises(NoSuchMethod):
            dispatcher.find_method(LogHandler(conf), req(name))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "9" * 5000,
                                   [1], {"a": 1}, b"x", None])
def test_counter_headers_that_are_not_counts_are_zero(value: Any) -> None:
    """A float inf in x-rpcworker-redeliveries made on_receipt raise OverflowError in the
    consumer loop: the daemon died, and again on every redelivery."""
    for name in (xheaders.REDELIVERIES_HEADER, xheaders.RETRIES_HEADER,
                 xheaders.QUORUM_DELIVERY_COUNT):
        assert xheaders.int_header({name: value}, name) == 0
    b = dataclasses.replace(AFTER, max_redeliveries=2)
    out = decisions.redelivered(b, req("add", call=False, redelivered=True,
                                       headers={xheaders.REDELIVERIES_HEADER: value}))
    assert out is not None and out.action is Action.COUNT
    failed = run(Handler(), RETRYING, req(
        "boom", call=False, headers={xheaders.RETRIES_HEADER: value}))
    assert failed.action is Action.RETRY


@pytest.mark.parametrize("binding", [AFTER, BEFORE])
def test_unknown_method_is_refused_on_receipt(binding: Binding) -> None:
    """Decided on the loop thread before any receipt ack, so even at-most-once parks it."""
    cast = unknown_method(Handler(), binding, req("nope", call=False))
    assert cast is not None and cast.action is Action.DEAD_LETTER and cast.reply is None
    assert cast.reason == "NoSuchMethod: Endpoint does not support RPC method nope"
    call = unknown_method(Handler(), binding, req("_secret"))
    assert call is not None and call.action is Action.ACK and error_type(call) == "NoSuchMethod"
    assert unknown_method(Handler(), binding, req("add")) is None
    assert unknown_method(Handler(), binding, req(None, call=False)) is None


def test_refusal_log_lines_cannot_be_forged() -> None:
    from rpcworker.wire.logfields import printable as _printable

    assert _printable("method a\nERROR forged line") == "method a\\nERROR forged line"
    assert _printable("plain reason: 'x'") == "plain reason: 'x'"


def test_unknown_method_caches_only_what_it_found() -> None:
    h = Handler()
    assert unknown_method(h, AFTER, req("add")) is None
    assert (id(h), Handler, "add", None, "1.0") in dispatcher._FOUND
    assert unknown_method(h, AFTER, req("nope")) is not None
    assert not any(key[2] == "nope" for key in dispatcher._FOUND)

    class Dynamic:
        names = {"ping"}

        def __getattr__(self, name: str) -> Any:
            if name in self.names:
                return lambda ctxt: "pong"
            raise AttributeError(name)

    d = Dynamic()
    assert unknown_method(d, AFTER, req("ping")) is None
    d.names = set()  # a __getattr__ handler may stop answering: never cached
    assert unknown_method(d, AFTER, req("ping")) is not None
