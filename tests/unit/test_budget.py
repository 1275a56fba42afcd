"""The in-flight byte budget (``rpcworker.engine.budget``): sizes, windows, the throttle's
pause and resume, and the worker on memory:// with a budget."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from rpcworker.config import conffile
from rpcworker.daemon import service
from rpcworker.engine.budget import (
    GENERATION,
    MAX_WINDOW,
    Budget,
    Sizes,
    Throttle,
)
from rpcworker.errors import ConfigError
from rpcworker.testing import HandlerFixture
from tests.helpers import wait_for

KiB = 1024
MiB = 1024 * KiB


# -- sizes and windows ----------------------------------------------------------------------


def test_sizes_assume_the_largest_message_until_one_is_seen() -> None:
    sizes = Sizes(assumed=16 * MiB)
    assert sizes.estimate == 16 * MiB
    sizes.add(300)
    sizes.add(1200)
    sizes.add(50)
    assert sizes.estimate == 1200
    sizes.reset()
    assert sizes.estimate == 16 * MiB


def test_sizes_forget_a_large_body_after_two_generations() -> None:
    sizes = Sizes(assumed=16 * MiB)
    sizes.reset(now=0.0)
    sizes.add(10 * MiB)
    sizes.add(100)
    sizes.age(GENERATION - 0.1)
    assert sizes.estimate == 10 * MiB
    sizes.age(GENERATION)  # the large one is in the previous generation now
    sizes.add(100)
    assert sizes.estimate == 10 * MiB
    sizes.age(2 * GENERATION)
    assert sizes.estimate == 100
    sizes.age(10 * GENERATION)  # idle: nothing came in, what was seen last is kept
    sizes.age(20 * GENERATION)
    assert sizes.estimate == 100


def test_window_is_the_share_of_the_budget_in_messages_of_the_recent_size() -> None:
    budget = Budget(limit=192 * MiB, max_message_size=16 * MiB)
    assert budget.window(64, consumers=1) == 12  # nothing seen: 16 MiB messages
    assert budget.window(64, consumers=4) == 3
    assert budget.window(64, consumers=40) == 1  # never less than one
    budget.take(1000)
    assert budget.window(64, consumers=4) == 64  # small messages: prefetch_count
    assert budget.window(0, consumers=1) == MAX_WINDOW  # no prefetch limit: AMQP's largest
    budget.take(15_000_000)
    assert budget.window(64, consumers=1) == 13  # 201,326,592 // 15,000,000


def test_no_budget_gives_the_binding_prefetch() -> None:
    budget = Budget(limit=0, max_message_size=16 * MiB)
    budget.take(100 * MiB)
    assert not budget.over
    assert budget.window(64, consumers=3) == 64
    assert budget.window(0, consumers=3) is None


def test_bytes_count_until_settled() -> None:
    budget = Budget(limit=10 * KiB, max_message_size=4 * KiB)
    budget.take(6 * KiB)
    assert not budget.over
    budget.take(4 * KiB)
    assert budget.over and budget.held == 10 * KiB
    budget.release(6 * KiB)
    assert not budget.over and budget.held == 4 * KiB
    budget.release(8 * KiB)
    assert budget.held == 0  # never below zero


# -- the throttle -----------------------------------------------------------------------------


class FakeConsumers:
    """Subscriptions as the throttle sees them: windows of ``window`` slots per consumer."""

    def __init__(self, budget: Budget, consumers: int = 2, prefetch: int = 64) -> None:
        self.budget, self.n, self.prefetch = budget, consumers, prefetch
        self.calls: list[str] = []
        self.paused = False
        self.windows = [budget.window(prefetch, consumers)] * consumers

    def pause(self) -> int:
        self.calls.append("pause")
        self.paused = True
        return self.n

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False
        self.windows = [self.budget.window(self.prefetch, self.n)] * self.n

    def slots(self) -> int:
        return sum(self.budget.window(self.prefetch, self.n) or 0 for _ in range(self.n))

    def rewindow(self) -> int:
        want = self.budget.window(self.prefetch, self.n) or MAX_WINDOW
        now = self.windows[0] or MAX_WINDOW
        if want * 2 <= now or want >= 2 * now:
            self.calls.append(f"rewindow {want}")
            self.windows = [want] * self.n
            return self.n
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_throttle(
    limit: int = 100 * KiB, largest: int = 10 * KiB
) -> tuple[Budget, FakeConsumers, Throttle, Clock]:
    budget = Budget(limit, largest)
    consumers = FakeConsumers(budget)
    clock = Clock()
    throttle = Throttle(budget, consumers, clock=clock)
    throttle.connected()
    return budget, consumers, throttle, clock


def test_over_the_budget_pauses_and_resumes_only_when_the_windows_fit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "rpcworker.engine.budget")
    budget, consumers, throttle, clock = make_throttle()
    for _ in range(11):
        budget.take(10 * KiB)  # windows of 5 x 10 KiB each, overrun by a burst
    throttle.step()
    assert consumers.calls == ["pause"] and throttle.paused_since == clock.now
    assert "Throttling: 0.1 MiB of message bodies in flight" in caplog.text
    clock.now += 2
    budget.release(60 * KiB)  # 50 KiB held: not yet room for 2 windows of 5 x 10 KiB
    throttle.step()
    assert consumers.calls == ["pause"]
    budget.release(50 * KiB)
    throttle.step()
    assert consumers.calls == ["pause", "resume"] and throttle.paused_since is None
    assert throttle.seconds_throttled == pytest.approx(2.0)
    assert "Throttling over after 2.0 s" in caplog.text


def test_throttling_lines_are_rate_limited_with_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "rpcworker.engine.budget")
    budget, consumers, throttle, clock = make_throttle()
    for _ in range(6):  # six pauses within a few seconds
        budget.take(100 * KiB)
        throttle.step()
        clock.now += 0.5
        budget.release(100 * KiB)
        throttle.step()
    assert consumers.calls == ["pause", "resume"] * 6
    assert caplog.text.count("Throttling: ") == 2
    assert caplog.text.count("Throttling over after") == 2
    clock.now += 30
    throttle.tick()
    assert "Throttled 4 more time(s) in the last 30 s (3.0 s throttled since start)" in caplog.text


def test_a_message_larger_than_the_budget_is_taken_then_handled_alone() -> None:
    budget, consumers, throttle, clock = make_throttle(limit=100 * KiB, largest=100 * KiB)
    budget.take(150 * KiB)  # larger than the whole budget: taken, never refused
    throttle.step()
    assert consumers.calls == ["pause"]
    budget.release(150 * KiB)
    throttle.step()
    assert consumers.calls == ["pause", "resume"]


def test_windows_follow_the_recent_size() -> None:
    budget, consumers, throttle, clock = make_throttle(limit=1 * MiB, largest=64 * KiB)
    assert consumers.windows == [8, 8]  # 1 MiB / (2 x 64 KiB): nothing seen yet
    budget.take(1 * KiB)
    budget.release(1 * KiB)
    throttle.step()  # small messages: wider at once
    assert consumers.calls == ["rewindow 64"]
    budget.take(40 * KiB)
    budget.release(40 * KiB)
    throttle.step()  # a larger one: narrower at once
    assert consumers.calls[-1] == "rewindow 12"
    budget.take(30 * KiB)
    throttle.step()  # not off by a factor of two: left as it is
    assert consumers.calls[-1] == "rewindow 12" and len(consumers.calls) == 2
    clock.now += GENERATION
    throttle.tick()
    budget.take(1 * KiB)
    throttle.step()
    assert len(consumers.calls) == 2  # the 40 KiB body is still in the previous generation
    clock.now += GENERATION
    throttle.tick()  # forgotten two generations later
    throttle.step()
    assert consumers.calls[-1] == "rewindow 64"


def test_a_lost_connection_ends_the_pause_and_keeps_only_what_still_runs() -> None:
    budget, consumers, throttle, clock = make_throttle()
    budget.take(120 * KiB)
    throttle.step()
    assert throttle.paused_since is not None
    clock.now += 1
    throttle.disconnected(still_held=30 * KiB)
    assert throttle.paused_since is None and budget.held == 30 * KiB
    assert throttle.seconds_throttled == pytest.approx(1.0)
    throttle.connected()
    assert budget.sizes.estimate == 10 * KiB  # the largest message again, until seen


def test_no_budget_never_throttles() -> None:
    budget = Budget(0, 16 * MiB)
    consumers = FakeConsumers(budget)
    throttle = Throttle(budget, consumers)
    budget.take(10**10)
    throttle.step()
    assert consumers.calls == []


# -- start-up check ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget, ok", [(0, True), (16 * MiB, True), (16 * MiB - 1, False)])
def test_a_budget_smaller_than_max_message_size_is_a_config_error(budget: int, ok: bool) -> None:
    conf = conffile.new_conf(with_cli=False)
    conf([], project="rpcworker-test", default_config_files=[])
    conf.set_override("max_inflight_bytes", budget)
    if ok:
        service.check_budget(conf)
        return
    with pytest.raises(ConfigError) as err:
        service.check_budget(conf)
    assert "max_inflight_bytes" in str(err.value) and "max_message_size" in str(err.value)


# -- the worker, on memory:// -----------------------------------------------------------------


class Gate:
    """A handler whose ``hold`` waits until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.seen: list[int] = []
        self.lock = threading.Lock()

    def hold(self, ctxt: dict[str, Any], i: int, blob: str = "") -> None:
        self.open.wait(30)
        with self.lock:
            self.seen.append(i)


def test_the_worker_pauses_over_the_budget_and_loses_nothing() -> None:
    """Small casts first (the windows widen to prefetch_count), then a burst of 2 KiB
    casts while the handler is held: the worker takes more than the budget, pauses, and
    once the handler goes on every cast is handled once and the pause ends."""
    gate = Gate()
    fx = HandlerFixture(
        gate,
        threads=4,
        configure=lambda conf: (
            conf.set_override("max_message_size", 4 * KiB),
            conf.set_override("max_inflight_bytes", 8 * KiB),
        ),
    )
    with fx:
        gate.open.set()
        for i in range(5):
            fx.cast("hold", i=i)
        wait_for(lambda: len(gate.seen) == 5, 10)
        gate.open.clear()
        for i in range(5, 45):
            fx.cast("hold", i=i, blob="x" * 2000)
        worker = fx.worker
        wait_for(
            lambda: worker.throttle.paused_since is not None, 10, message="the worker throttled"
        )
        held = worker.budget.held
        assert held >= 8 * KiB
        gate.open.set()
        wait_for(lambda: len(gate.seen) == 45, 20, message="every cast handled")
        wait_for(lambda: worker.throttle.paused_since is None and worker.budget.held == 0, 10)
        assert sorted(gate.seen) == list(range(45))
        assert worker.throttle.seconds_throttled > 0


def test_subscriptions_pause_resume_and_a_binding_started_while_paused() -> None:
    """On memory://: pause cancels the consumers but those of an auto_delete queue, resume
    starts them with the budget's window; a binding declared while paused (a SIGHUP, a
    retried declaration) waits for resume instead of consuming at once."""
    import kombu

    from rpcworker.amqp import topology
    from rpcworker.amqp.transport import Capabilities
    from rpcworker.config.bindingconf import Binding
    from rpcworker.engine.events import Listener
    from rpcworker.engine.subscriptions import Subscriptions

    def binding(name: str, auto_delete: bool = False) -> Binding:
        return Binding(
            name=name,
            type="topic",
            handler="h",
            exchange=f"ex-{name}",
            durable=False,
            prefetch_count=64,
            acknowledge="after",
            queue=name,
            routing_keys=("#",),
            auto_delete=auto_delete,
        )

    budget = Budget(limit=1 * MiB, max_message_size=64 * KiB)
    topologies = [topology.build(binding("kept")), topology.build(binding("gone", True))]
    subs = Subscriptions(
        topologies,
        {"h": object()},
        lambda sub, message: None,
        Listener(),
        retry_interval=1,
        window=budget.window,
    )
    with kombu.Connection("memory://") as conn:
        conn.connect()
        consumers = subs.start(conn, Capabilities.of(conn))
        active = {c.queues[0].name: c for c in consumers}
        assert all(c._active_tags for c in consumers)  # consuming
        assert active["kept"].prefetch_count == 8  # 1 MiB / (2 consumers x 64 KiB)
        assert subs.pause() == 1  # the auto_delete queue's consumer is left consuming
        assert not active["kept"]._active_tags and active["gone"]._active_tags
        late = topology.build(binding("late"))
        subs.topologies.append(late)
        subs.declare(late)  # as a SIGHUP or a retried declaration does
        [late_consumer] = [c for c in subs.consumers() if c.queues[0].name == "late"]
        assert not late_consumer._active_tags  # waits for resume
        budget.take(1 * KiB)  # small messages seen: the windows widen
        subs.resume()
        assert active["kept"]._active_tags and late_consumer._active_tags
        assert active["kept"].prefetch_count == 64 and late_consumer.prefetch_count == 64
