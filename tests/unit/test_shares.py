"""The fair default share of the handler threads among a process's bindings
(``rpcworker.engine.shares``), carried out by ``Inflight``, shown in the metrics and in
/healthz's reason."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rpcworker.config.bindingconf import Binding
from rpcworker.daemon import endpoints, instruments
from rpcworker.daemon.supervisor import Hub
from rpcworker.engine import shares
from rpcworker.engine.readiness import NullNotifier
from rpcworker.engine.shares import Load
from rpcworker.policy.outcomes import Delivery
from tests.fakes import AFTER, Clock, FakeSettle, Gated, Sink, inflight_of, req, settle_until
from tests.helpers import http_get, wait_for


def bindings(*caps: int) -> list[Binding]:
    """One binding per cap, named a, b, c ... (0: no max_concurrency)."""
    return [
        dataclasses.replace(AFTER, name=chr(ord("a") + i), max_concurrency=cap)
        for i, cap in enumerate(caps)
    ]


@pytest.mark.parametrize(
    ("pool", "caps", "expected"),
    [
        (16, (0,), {"a": 0}),  # alone: the whole pool, no limit
        (16, (5,), {"a": 5}),  # alone with an explicit cap: the cap
        (4, (0, 0), {"a": 3, "b": 3}),  # the scenario: one thread kept for the other
        (16, (0, 0), {"a": 12, "b": 12}),  # the default pool: 4 kept back for the other
        (64, (0, 0), {"a": 48, "b": 48}),
        (16, (0, 0, 0), {"a": 12, "b": 12, "c": 12}),  # 2 kept for each of the others
        (16, (0,) * 8, dict.fromkeys("abcdefgh", 9)),  # 1 kept for each of 7 others
        (4, (0,) * 8, dict.fromkeys("abcdefgh", 1)),  # fewer threads than bindings
        (16, (0, 2), {"a": 14, "b": 2}),  # b needs no more kept back than its cap
        (16, (16, 0), {"a": 16, "b": 12}),  # an explicit cap wins, even the whole pool
        (2, (0, 0), {"a": 1, "b": 1}),
        (3, (0, 0), {"a": 2, "b": 2}),
    ],
)
def test_thread_limits(pool: int, caps: tuple[int, ...], expected: dict[str, int]) -> None:
    limits = shares.thread_limits(bindings(*caps), pool)
    assert limits == expected
    n = len(caps)
    for b in bindings(*caps):
        limit = limits[b.name] or pool
        assert limit >= max(1, pool // n) or b.max_concurrency  # never below a fair share
        if n > 1 and pool >= n and not b.max_concurrency:
            # one binding hung on all its threads leaves each other binding a thread
            assert pool - limit >= n - 1


def test_more_bindings_than_threads_is_warned_about() -> None:
    assert shares.thread_limits_warning(bindings(0, 0), 16) is None
    assert shares.thread_limits_warning(bindings(0), 1) is None
    warning = shares.thread_limits_warning(bindings(0, 0, 0), 2)
    assert warning is not None and "executor_thread_pool_size" in warning


def test_a_hung_binding_leaves_threads_to_the_other_by_default() -> None:
    """The issue's scenario without the broker: pool 4, no max_concurrency anywhere;
    binding a hangs on 8 deliveries, then 20 go to b: all 20 are handled while a's
    handlers still hang, and a's extra ones wait their turn, in order."""
    a, b = bindings(0, 0)
    inflight, settle, h = inflight_of(4), FakeSettle(), Gated()
    assert inflight.share([a, b]) == {"a": 3, "b": 3}
    try:
        for i in range(8):
            inflight.start(Delivery(None, a, "qa", req("wait", args={"i": i})), h)
        for _ in range(20):
            inflight.start(Delivery(None, b, "qb", req("add", args={"a": 1, "b": 1})), h)
        settle_until(inflight, settle, 20)
        assert [d.binding.name for d, _ in settle.settled] == ["b"] * 20
        assert sorted(h.started) == [0, 1, 2]  # a holds its 3 threads, 5 wait
        [load_a, load_b] = inflight.loads()
        assert load_a == Load("a", running=3, waiting=5, limit=3)
        assert load_b == Load("b", running=0, waiting=0, limit=3)
        assert inflight.saturation(inflight.loads()) == (
            "binding a saturated (3 of 3 threads busy, 5 waiting)"
        )
        h.gate.set()
        settle_until(inflight, settle, 28)
        assert sorted(h.started) == list(range(8))
        assert inflight.idle and inflight.saturation(inflight.loads()) is None
    finally:
        h.gate.set()
        inflight.executor.shutdown(wait=True)


def test_an_explicit_max_concurrency_is_kept() -> None:
    a, b = bindings(1, 0)
    inflight, settle, h = inflight_of(4), FakeSettle(), Gated()
    assert inflight.share([a, b]) == {"a": 1, "b": 3}
    try:
        for i in range(3):
            inflight.start(Delivery(None, a, "qa", req("wait", args={"i": i})), h)
        for i in range(3, 7):
            inflight.start(Delivery(None, b, "qb", req("wait", args={"i": i})), h)
        settle_until_started(h, 4)
        loads = {x.binding: x for x in inflight.loads()}
        assert (loads["a"].running, loads["a"].waiting) == (1, 2)
        assert (loads["b"].running, loads["b"].waiting) == (3, 1)
        assert sorted(h.started) == [0, 3, 4, 5]
        h.gate.set()
        settle_until(inflight, settle, 7)
    finally:
        h.gate.set()
        inflight.executor.shutdown(wait=True)


def settle_until_started(h: Gated, n: int, timeout: float = 5) -> None:
    wait_for(lambda: len(h.started) >= n, timeout, message=f"{n} handlers started")


def test_a_raised_limit_starts_waiting_deliveries_at_once() -> None:
    """A SIGHUP that removes a binding gives the other a higher limit: its deliveries
    waiting for a thread start without waiting for one of its handlers to finish."""
    a, b = bindings(0, 0)
    inflight, settle, h = inflight_of(4), FakeSettle(), Gated()
    inflight.share([a, b])
    try:
        for i in range(4):
            inflight.start(Delivery(None, a, "qa", req("wait", args={"i": i})), h)
        settle_until_started(h, 3)
        assert [x.waiting for x in inflight.loads()] == [1, 0]  # a, b
        assert inflight.share([a]) == {"a": 0}  # alone now: the whole pool
        settle_until_started(h, 4)
        h.gate.set()
        settle_until(inflight, settle, 4)
    finally:
        h.gate.set()
        inflight.executor.shutdown(wait=True)


def test_loads_are_gauges() -> None:
    m = instruments.Metrics(["a", "b"])
    assert m.registry.get_sample_value("rpcworker_waiting", {"binding": "a"}) == 0
    m.loads([Load("a", 3, 5, 3), Load("b", 1, 0, 12)])
    assert m.registry.get_sample_value("rpcworker_waiting", {"binding": "a"}) == 5
    assert m.registry.get_sample_value("rpcworker_binding_thread_limit", {"binding": "a"}) == 3
    assert m.registry.get_sample_value("rpcworker_binding_thread_limit", {"binding": "b"}) == 12


def test_saturation_counts_a_full_pool_too() -> None:
    busy_pool = [Load("a", 2, 0, 3), Load("b", 2, 4, 3)]
    assert shares.saturation(busy_pool, pool=4, busy=4) == (
        "binding b saturated (2 of 3 threads busy, 4 waiting)"
    )
    assert shares.saturation(busy_pool, pool=8, busy=4) is None  # threads free: a moment


def test_healthz_names_a_saturated_binding_and_stays_200() -> None:
    from prometheus_client import CollectorRegistry

    class FakeWorker:
        ready = True
        saturated: str | None = None

        def unable(self) -> str | None:
            return None

    worker = FakeWorker()
    endpoint = endpoints.serve_process(
        ("127.0.0.1", 0), CollectorRegistry(), endpoints.LoopProbe(NullNotifier()), worker
    )
    try:
        assert http_get(endpoint.port, "/healthz") == (200, "consume loop alive\n")
        worker.saturated = "binding a saturated (3 of 3 threads busy, 5 waiting)"
        assert http_get(endpoint.port, "/healthz") == (
            200,
            "consume loop alive; binding a saturated (3 of 3 threads busy, 5 waiting)\n",
        )
    finally:
        endpoint.close()


def test_supervisor_healthz_names_the_saturated_bindings_of_each_worker() -> None:
    hub = Hub(2, Sink(), None, clock=Clock(), alive=lambda pid: True)
    hub.on_event(0, 100, "ready", consuming=True, text="ok")
    hub.handle(
        json.dumps(
            {"w": 1, "p": 101, "e": "watchdog", "c": True, "u": None, "s": "binding a saturated"}
        ).encode()
    )
    assert hub.health(30) == (
        True,
        "2 worker consume loop(s) alive; worker 1: binding a saturated",
    )
    hub.on_event(1, 101, "watchdog", consuming=True)
    assert hub.health(30) == (True, "2 worker consume loop(s) alive")


def test_a_binding_retiring_after_a_sighup_keeps_its_own_cap() -> None:
    """A SIGHUP removes binding a (max_concurrency 1) while deliveries of it wait: a is no
    longer shared out, and its own cap still holds them back."""
    a, b = bindings(1, 0)
    inflight, settle, h = inflight_of(4), FakeSettle(), Gated()
    inflight.share([a, b])
    try:
        for i in range(3):
            inflight.start(Delivery(None, a, "qa", req("wait", args={"i": i})), h)
        settle_until_started(h, 1)
        assert inflight.share([b]) == {"b": 0}
        [load_a, _] = inflight.loads()
        assert (load_a.running, load_a.waiting, load_a.limit) == (1, 2, 1)
        assert sorted(h.started) == [0]
        h.gate.set()
        settle_until(inflight, settle, 3)
    finally:
        h.gate.set()
        inflight.executor.shutdown(wait=True)
