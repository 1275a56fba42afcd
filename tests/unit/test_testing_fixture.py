"""The plugin author's fixture: a real Worker loop on kombu's memory:// transport."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

import rpcworker
from rpcworker.config import handlerapi
from rpcworker.handlers.echo import EchoHandler
from rpcworker.testing import (  # rpcworker_handler: the pytest fixture, as a conftest gets it
    HandlerFixture,
    RemoteFailure,
    rpcworker_handler,  # noqa: F401
)


class Counter:
    """Counts casts and events; thread-safe because handlers run in a pool."""

    def __init__(self, conf: Any) -> None:
        self.lock = threading.Lock()
        self.casts: list[int] = []
        self.events: list[Any] = []
        self.requeued = 0

    def add(self, ctxt: dict[str, Any], n: int) -> int:
        with self.lock:
            self.casts.append(n)
        return n

    def flaky(self, ctxt: dict[str, Any]) -> str:
        with self.lock:
            self.requeued += 1
        raise rpcworker.Requeue("try again")

    def handle_message(self, message: rpcworker.Message) -> None:
        with self.lock:
            self.events.append((message.routing_key, message.body))


def test_call_cast_event_and_errors() -> None:
    with HandlerFixture(EchoHandler) as fx:
        assert fx.call("echo", ctxt={"user": "u"}, a=1) == {"a": 1}
        assert fx.call("context", ctxt={"user": "u"})["user"] == "u"
        with pytest.raises(RemoteFailure) as info:
            fx.call("fail", message="nope")
        assert info.value.exc_type == "ValueError" and "nope" in str(info.value)
        with pytest.raises(RemoteFailure) as info:
            fx.call("_private")
        assert info.value.exc_type == "NoSuchMethod"


def test_casts_and_events_are_handled_and_acked() -> None:
    with HandlerFixture(Counter) as fx:
        for i in range(50):
            fx.cast("add", n=i)
        fx.publish_event({"k": "v"}, routing_key="thing.created")
        fx.wait_idle()
        assert sorted(fx.handler.casts) == list(range(50))
        assert fx.handler.events == [("thing.created", {"k": "v"})]
        assert fx.worker.stats.acked == 51 and fx.worker.stats.dead_lettered == 0


def test_requeue_goes_to_the_delay_queue_then_the_parking_lot() -> None:
    with HandlerFixture(Counter, binding_options={"max_retries": 2}) as fx:
        fx.cast("flaky")
        fx.wait_idle()
        assert fx.handler.requeued == 1
        assert fx.worker.stats.retried == 1 and fx.worker.stats.dead_lettered == 0
    with HandlerFixture(Counter, binding_options={"max_retries": 0}) as fx:
        fx.cast("flaky")
        fx.wait_idle()
        assert fx.handler.requeued == 1
        assert fx.worker.stats.retried == 0 and fx.worker.stats.dead_lettered == 1


def test_bad_input_is_rejected_and_the_worker_goes_on() -> None:
    marker: list[str] = []

    class Evil:
        def __reduce__(self) -> Any:
            return (marker.append, ("unpickled!",))

    with HandlerFixture(Counter) as fx:
        fx.publish_raw(pickle.dumps(Evil()), content_type="application/x-python-serialize")
        fx.publish_raw(b"{not json")
        fx.publish_raw(b"\xff\xfe\xfd")
        fx.cast("add", n=7)
        fx.wait_idle()
        assert marker == []
        assert fx.handler.casts == [7]
        assert fx.worker.stats.dead_lettered == 3


def test_acknowledge_before() -> None:
    with HandlerFixture(Counter, acknowledge="before") as fx:
        fx.cast("add", n=1)
        fx.wait_idle()
        assert fx.handler.casts == [1] and fx.worker.stats.acked == 1


# -- outcomes, retries, plain AMQP, the pytest fixture ---------------------------------


def test_outcomes_record_each_delivery() -> None:
    from rpcworker.testing import ACKED, DEAD_LETTERED

    with HandlerFixture(Counter, binding_options={"max_retries": 0}) as fx:
        assert fx.call("add", n=3) == 3
        fx.cast("add", n=4)
        fx.cast("flaky")
        fx.publish_event({"k": 1}, routing_key="thing.created")
        fx.publish_raw(b"{not json")
        fx.wait_idle()
        assert len(fx.outcomes) == 5
        by_kind = {o.kind: o for o in fx.outcomes}
        assert by_kind["call"].action == ACKED and by_kind["call"].result == 3
        assert by_kind["call"].args == {"n": 3}
        assert by_kind["event"].routing_key == "thing.created" and by_kind["event"].acked
        assert by_kind["refused"].body == b"{not json"
        dead = {o.kind: o for o in fx.dead_letters}
        assert sorted(dead) == ["cast", "refused"] and dead["cast"].method == "flaky"
        assert dead["cast"].action == DEAD_LETTERED
        assert "Requeue: try again" in str(dead["cast"].reason)
        assert "refused" in str(dead["refused"].reason)
        assert len(fx.acked) == 3 and fx.retried == []
        fx.clear_outcomes()
        assert fx.outcomes == []


def test_release_retries_runs_them_again_until_the_limit() -> None:
    with HandlerFixture(Counter, binding_options={"max_retries": 3}) as fx:
        fx.cast("flaky")
        for attempt in range(1, 4):
            fx.wait_for_outcomes(attempt, action="retried")
            assert fx.release_retries() == 1
        [dead] = fx.wait_for_outcomes(action="dead-lettered")
        assert dead.retries == 3 and fx.handler.requeued == 4
        assert [o.retries for o in fx.retried] == [0, 1, 2]
        assert fx.release_retries() == 0


def test_wait_for_outcomes_times_out_with_what_was_recorded() -> None:
    with HandlerFixture(Counter) as fx:
        fx.cast("add", n=1)
        with pytest.raises(TimeoutError, match="dead-lettered.*recorded: .*'add'"):
            fx.wait_for_outcomes(action="dead-lettered", timeout=0.3)


def test_call_amqp() -> None:
    with HandlerFixture(EchoHandler) as fx:
        assert fx.call_amqp("echo", a=[1, 2]) == {"a": [1, 2]}
        with pytest.raises(RemoteFailure) as info:
            fx.call_amqp("fail", message="bad")
        assert info.value.exc_type == "ValueError" and "bad" in str(info.value)
        fx.wait_idle()
        assert [o.kind for o in fx.outcomes] == ["call", "call"]
        assert fx.outcomes[1].failure and fx.outcomes[1].failure["class"] == "ValueError"


def test_pytest_fixture_factory(rpcworker_handler: Any) -> None:  # noqa: F811
    fx = rpcworker_handler(EchoHandler)
    other = rpcworker_handler(Counter, acknowledge="before")
    assert fx.call("echo", x=1) == {"x": 1}
    other.cast("add", n=2)
    other.wait_idle()
    assert other.handler.casts == [2] and other.acked[0].kind == "cast"


def test_rpc_methods_follow_find_method() -> None:
    import functools

    from rpcworker.config import plugins
    from rpcworker.handlers.log import LogHandler

    class Base:
        def inherited(self, ctxt: Any) -> None: ...

        def shadowed(self, ctxt: Any) -> None: ...

    class Handler(Base):
        target = object()
        shadowed = None
        partial = functools.partial(print)

        def visible(self, ctxt: Any) -> None: ...

        @staticmethod
        def static(ctxt: Any) -> None: ...

        def _private(self, ctxt: Any) -> None: ...

        def handle_message(self, message: Any) -> None: ...

        @property
        def prop(self) -> int:
            return 1

    assert handlerapi.rpc_methods(Handler) == ("inherited", "static", "visible")
    assert handlerapi.rpc_methods(LogHandler) is None
    info = plugins.describe("h", "m:Handler", Handler)
    assert (info.namespace, info.version, info.methods) == (
        None,
        "1.0",
        ("inherited", "static", "visible"),
    )
