"""Handler execution without a broker: stuck threads replaced, deadlines from the start,
per-binding concurrency caps, async handlers (aio and the test kit), the recycling bounds."""

from __future__ import annotations

import asyncio
import dataclasses
import select
import threading
import time
from typing import Any

import pytest

from rpcworker.config import bindingconf
from rpcworker.engine import aio, recycling
from rpcworker.engine.executor import Executor
from rpcworker.engine.inflight import run
from rpcworker.errors import ConfigError, HandlerTimeout
from rpcworker.policy.outcomes import Action, Delivery
from rpcworker.testing import HandlerFixture, RemoteFailure
from tests.fakes import AFTER, Clock, FakeSettle, Gated, Sink, inflight_of, req, settle_until

# -- the executor ------------------------------------------------------------------------


def wait_completed(ex: Executor, n: int, timeout: float = 5) -> list[tuple[int, Any]]:
    got: list[tuple[int, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        select.select([ex.fileno()], [], [], 0.1)
        got += ex.completed()
    return got


def test_a_stuck_thread_is_replaced_and_the_pool_keeps_its_size() -> None:
    ex = Executor(2)
    gate = threading.Event()
    try:
        ex.submit(1, gate.wait, 30)
        ex.submit(2, gate.wait, 30)
        time_limit = time.monotonic() + 5
        while ex.busy < 2 and time.monotonic() < time_limit:
            time.sleep(0.01)
        assert ex.busy == 2 and ex.stuck == 0
        assert ex.abandon(1) and not ex.abandon(1)  # once per job
        assert ex.abandon(2) and ex.stuck == 2
        for token in range(3, 7):  # the two fresh threads take new work
            ex.submit(token, lambda: "ok")
        assert sorted(t for t, _ in wait_completed(ex, 4)) == [3, 4, 5, 6]
        assert not ex.abandon(99)  # not running
        gate.set()  # the stuck ones return, and end: the pool is two threads again
        assert sorted(t for t, _ in wait_completed(ex, 2)) == [1, 2]
        time_limit = time.monotonic() + 5
        while ex.stuck and time.monotonic() < time_limit:
            time.sleep(0.01)
        assert ex.stuck == 0
        alive = [
            t
            for t in threading.enumerate()
            if t.name.startswith("rpcworker-handler") and t in ex._threads
        ]
        assert len(alive) == 2
    finally:
        gate.set()
        ex.shutdown(wait=True)


# -- inflight: concurrency caps and deadlines ---------------------------------------------


def test_a_binding_holds_at_most_max_concurrency_threads() -> None:
    slow = dataclasses.replace(AFTER, name="slow", max_concurrency=2)
    fast = dataclasses.replace(AFTER, name="fast")
    inflight, settle, h = inflight_of(4), FakeSettle(), Gated()
    try:
        for i in range(5):
            inflight.start(Delivery(None, slow, "q", req("wait", args={"i": i})), h)
        for _ in range(10):
            inflight.start(Delivery(None, fast, "q", req("add", args={"a": 1, "b": 1})), h)
        settle_until(inflight, settle, 10)  # fast is served while slow waits for a turn
        assert all(d.binding is fast for d, _ in settle.settled)
        assert sorted(h.started) == [0, 1] and inflight.busy == 5
        h.gate.set()
        settle_until(inflight, settle, 15)
        assert sorted(h.started) == [0, 1, 2, 3, 4]  # the waiting ones ran in order, after
        assert inflight.idle
    finally:
        h.gate.set()
        inflight.executor.shutdown(wait=True)


def test_the_deadline_counts_from_the_start_of_the_call() -> None:
    """One thread, handler_timeout 0.5 s: the second delivery waits 1 s for the thread
    (the first one holds it), then runs; only the first one times out."""
    b = dataclasses.replace(AFTER, handler_timeout=0.5)
    inflight, settle, h = inflight_of(1), FakeSettle(), Gated()
    try:
        inflight.start(Delivery(None, b, "q", req("wait", args={"i": 0})), h)
        inflight.start(Delivery(None, b, "q", req("wait", args={"i": 1})), h)
        settle_until(inflight, settle, 1)
        [(first, timed_out)] = settle.settled
        assert first.request is not None and first.request.args == {"i": 0}
        assert "HandlerTimeout" in (timed_out.reason or "")
        assert inflight.executor.stuck == 1  # replaced: the second one now runs
        deadline = time.monotonic() + 5
        while h.started != [0, 1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.started == [0, 1]
        h.gate.set()  # the second one returns well within its own 0.5 s
        settle_until(inflight, settle, 2)
        assert settle.settled[1][1].action is Action.ACK
    finally:
        h.gate.set()
        inflight.executor.shutdown(wait=True)


# -- async def ----------------------------------------------------------------------------


class Async:
    def __init__(self, conf: Any = None) -> None:
        self.cleaned: list[str] = []

    async def double(self, ctxt: dict[str, Any], x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def forever(self, ctxt: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            self.cleaned.append("finally")

    async def boom(self, ctxt: dict[str, Any]) -> None:
        raise KeyError("async boom")

    def plain(self, ctxt: dict[str, Any]) -> str:
        return "sync"


def test_async_methods_are_awaited_and_cancelled_at_their_deadline() -> None:
    h = Async()
    out = run(h, AFTER, req("double", args={"x": 21}))
    assert out.action is Action.ACK and out.reply is not None and b"42" in out.reply.body
    assert b"sync" in run(h, AFTER, req("plain")).reply.body  # type: ignore[union-attr]
    failed = run(h, AFTER, req("boom"))
    assert failed.action is Action.ACK and b"KeyError" in failed.reply.body  # type: ignore[union-attr]
    timed = run(h, dataclasses.replace(AFTER, handler_timeout=0.2), req("forever"))
    assert "HandlerTimeout" in (timed.reason or "")
    deadline = time.monotonic() + 5
    while not h.cleaned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.cleaned == ["finally"]  # the task was cancelled: its finally block ran


def test_aio_tells_its_timeout_from_the_coroutines_own() -> None:
    async def own() -> None:
        raise TimeoutError("the handler's own")

    with pytest.raises(TimeoutError, match="the handler's own"):
        aio.wait(own(), 5)
    with pytest.raises(HandlerTimeout):
        aio.wait(asyncio.sleep(10), 0.05)


def test_the_test_kit_runs_async_handlers() -> None:
    with HandlerFixture(Async) as fx:
        assert fx.call("double", x=4) == 8
        assert fx.call_amqp("double", x=5) == 10
        assert fx.call("plain") == "sync"
        with pytest.raises(RemoteFailure) as info:
            fx.call("boom")
        assert info.value.exc_type == "KeyError"


# -- recycling and concurrency caps in the configuration -----------------------------------------


class Stuck:
    stuck = 0


def conf_of(**values: Any) -> Any:
    class Conf:
        max_stuck_threads = 2
        max_messages_per_worker = 0
        max_memory_per_worker = 0

    for k, v in values.items():
        setattr(Conf, k, v)
    return Conf()


def test_recycler_bounds() -> None:
    ex: Any = Stuck()
    r = recycling.Recycler(conf_of(max_messages_per_worker=3), ex)
    assert r.due(check_memory=True) is None
    ex.stuck = 3
    assert r.due(False) == "3 handler threads stuck (max_stuck_threads = 2)"
    ex.stuck = 0
    for _ in range(3):
        r.settled(None, None)  # type: ignore[arg-type]
    assert r.due(False) == "3 messages handled (max_messages_per_worker = 3)"
    turn = recycling.Recycler(conf_of(max_messages_per_worker=1), ex, may_recycle=lambda: False)
    turn.settled(None, None)  # type: ignore[arg-type]
    assert turn.due(False) is None  # not its turn yet
    big = recycling.Recycler(conf_of(max_memory_per_worker=1), ex)
    assert big.due(check_memory=False) is None
    assert "max_memory_per_worker = 1)" in (big.due(check_memory=True) or "")


def test_recycle_lock_is_one_process_at_a_time(tmp_path: Any) -> None:
    class Count:
        value = 2

    path = str(tmp_path / "turn.lock")
    first, second = recycling.RecycleLock(path, Count(), 2), recycling.RecycleLock(path, Count(), 2)
    assert first() and first()  # held until the process exits
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    with pytest.raises(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    lagging = Count()
    lagging.value = 1  # a replacement is not consuming yet
    assert not recycling.RecycleLock(str(tmp_path / "other.lock"), lagging, 2)()
    del second


@pytest.mark.parametrize(
    "binding, message",
    [
        ("max_concurrency = 5", "[binding:b] max_concurrency: 5 is more than the handler threads"),
        (
            "max_concurrency = 3\nprefetch_count = 2",
            "[binding:b] max_concurrency: 3 is more than prefetch_count (2)",
        ),
    ],
)
def test_max_concurrency_is_checked_against_the_pool_and_the_prefetch(
    make_conf: Any, binding: str, message: str
) -> None:
    text = (
        "[DEFAULT]\nbindings = b\nexecutor_thread_pool_size = 4\n[binding:b]\n"
        "type = direct\nhandler = echo\nrouting_key = k\n"
    )
    with pytest.raises(ConfigError) as info:
        bindingconf.parse(make_conf(text + binding + "\n"))
    assert str(info.value).startswith(message)
    ok = bindingconf.parse(make_conf(text + "max_concurrency = 3\nprefetch_count = 0\n"))
    assert ok[0].max_concurrency == 3


# -- showing it: the supervisor's health, the metrics ---------------------------------------


def test_supervisor_health_and_turns_follow_the_workers_that_can_take_work() -> None:
    import json as json_mod

    from rpcworker.daemon.supervisor import Hub

    clock = Clock()
    hub = Hub(2, Sink(), None, clock=clock, alive=lambda pid: True)

    class Count:
        value = -1

    hub.consuming_now = Count()
    hub.on_event(0, 100, "ready", consuming=True, text="ok")
    hub.on_event(1, 101, "ready", consuming=True, text="ok")
    assert hub.consuming_now.value == 2 and hub.health(30)[0]
    hub.handle(
        json_mod.dumps(
            {
                "w": 0,
                "p": 100,
                "e": "status",
                "c": False,
                "u": "recycling: 9 messages handled",
                "t": "x",
            }
        ).encode()
    )
    assert hub.consuming_now.value == 1
    assert hub.health(30) == (True, "2 worker consume loop(s) alive")  # worker 1 can
    hub.on_event(1, 101, "status", consuming=False, text="x", unable="recycling: stuck")
    ok, why = hub.health(30)
    assert not ok and why.startswith("no worker can take work: worker 0 recycling: 9")


def test_thread_and_recycle_metrics() -> None:
    from rpcworker.daemon import instruments

    m = instruments.Metrics(["b"])
    m.threads(busy=3, stuck=1)
    m.recycled()
    assert m.registry.get_sample_value("rpcworker_handler_threads_busy") == 3
    assert m.registry.get_sample_value("rpcworker_handler_threads_stuck") == 1
    assert m.registry.get_sample_value("rpcworker_recycles_total") == 1


def test_healthz_is_503_while_the_process_recycles() -> None:
    from prometheus_client import CollectorRegistry

    from rpcworker.daemon import endpoints
    from rpcworker.engine.readiness import NullNotifier
    from tests.helpers import http_get

    class FakeWorker:
        ready = True
        reason: str | None = None
        saturated: str | None = None

        def unable(self) -> str | None:
            return self.reason

    worker = FakeWorker()
    endpoint = endpoints.serve_process(
        ("127.0.0.1", 0), CollectorRegistry(), endpoints.LoopProbe(NullNotifier()), worker
    )
    try:
        assert http_get(endpoint.port, "/healthz") == (200, "consume loop alive\n")
        worker.reason = "recycling: 9 handler threads stuck (max_stuck_threads = 8)"
        assert http_get(endpoint.port, "/healthz") == (
            503,
            "recycling: 9 handler threads stuck (max_stuck_threads = 8)\n",
        )
    finally:
        endpoint.close()
