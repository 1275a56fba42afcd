"""The plugin author's fixture: a real Worker loop on kombu's memory:// transport."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

import rpcworker
from rpcworker.handlers.echo import EchoHandler
from rpcworker.testing import HandlerFixture, RemoteFailure


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
