from __future__ import annotations

import logging
from typing import Any

import pytest

from rpcworker.engine import ratelimit
from rpcworker.engine.ratelimit import LogLimiter, Suppressed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def admitted(limiter: LogLimiter, key: str, n: int, reason: str = "r") -> int:
    return sum(limiter.admit(key, f"{reason}{i}") for i in range(n))


def test_defaults_are_ten_lines_per_ten_seconds() -> None:
    assert (ratelimit.DEFAULT_BURST, ratelimit.DEFAULT_INTERVAL) == (10, 10.0)
    limiter = LogLimiter()
    assert (limiter.burst, limiter.interval) == (10, 10.0)


def test_burst_lines_then_counted(clock: Clock) -> None:
    limiter = LogLimiter(burst=3, interval=10, clock=clock)
    assert [limiter.admit("b", f"r{i}") for i in range(5)] == [True] * 3 + [False] * 2
    assert limiter.expired() == []  # the window is not over yet
    clock.now += 9.99
    assert not limiter.admit("b", "late")
    assert limiter.expired() == []


def test_summary_once_the_window_is_over(clock: Clock) -> None:
    limiter = LogLimiter(burst=2, interval=10, clock=clock)
    admitted(limiter, "b", 7, reason="reason ")
    clock.now += 10
    assert limiter.expired() == [Suppressed("b", 5, "reason 6", 10)]
    assert limiter.expired() == []  # summarised once
    assert admitted(limiter, "b", 3) == 2  # a fresh window


def test_summary_on_the_next_event_without_a_tick(clock: Clock) -> None:
    limiter = LogLimiter(burst=1, interval=10, clock=clock)
    admitted(limiter, "b", 4)
    clock.now += 60
    summaries = limiter.expired()  # what the consumer does before admit()
    assert summaries == [Suppressed("b", 3, "r3", 10)]
    assert limiter.admit("b", "new")


def test_a_window_that_is_over_is_never_lost(clock: Clock) -> None:
    """admit() after the interval, without expired() first: a fresh window, and what
    the old one held back is still reported."""
    limiter = LogLimiter(burst=1, interval=10, clock=clock)
    admitted(limiter, "b", 4)
    clock.now += 10
    assert limiter.admit("b", "new") and not limiter.admit("b", "newer")
    assert limiter.expired() == [Suppressed("b", 3, "r3", 10)]
    assert limiter.pending() == [Suppressed("b", 1, "newer", 10)]


def test_keys_are_independent(clock: Clock) -> None:
    limiter = LogLimiter(burst=2, interval=10, clock=clock)
    assert admitted(limiter, "a", 5) == 2
    clock.now += 5
    assert admitted(limiter, "b", 5) == 2
    clock.now += 5  # a's window is over, b's is not
    assert limiter.expired() == [Suppressed("a", 3, "r4", 10)]
    clock.now += 5
    assert limiter.expired() == [Suppressed("b", 3, "r4", 10)]


def test_quiet_windows_give_no_summary(clock: Clock) -> None:
    limiter = LogLimiter(burst=5, interval=10, clock=clock)
    assert admitted(limiter, "b", 5) == 5
    clock.now += 11
    assert limiter.expired() == []
    assert admitted(limiter, "b", 5) == 5  # the expired window was dropped


def test_pending_closes_every_window(clock: Clock) -> None:
    limiter = LogLimiter(burst=1, interval=10, clock=clock)
    admitted(limiter, "a", 3)
    admitted(limiter, "b", 1)
    assert limiter.pending() == [Suppressed("a", 2, "r2", 10)]
    assert limiter.pending() == [] and limiter.expired() == []
    assert limiter.admit("a", "x")


def test_every_event_is_either_logged_or_summarised(clock: Clock) -> None:
    """Nothing is lost: lines logged + summary counts == events, over many windows."""
    limiter = LogLimiter(burst=10, interval=10, clock=clock)
    logged = summarised = 0
    for i in range(1000):
        clock.now += 0.37
        summarised += sum(s.count for s in limiter.expired())
        logged += limiter.admit(f"b{i % 3}", str(i))
    summarised += sum(s.count for s in limiter.pending())
    assert logged + summarised == 1000
    assert logged <= 3 * 10 * (1000 * 0.37 / 10 + 1)


@pytest.mark.parametrize("burst, interval", [(0, 10), (1, 0), (1, -1)])
def test_bad_limits(burst: int, interval: float) -> None:
    with pytest.raises(ValueError):
        LogLimiter(burst, interval)


def test_consumer_logs_through_the_limiter(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """The intake's refusal logging (telling.Refusals) on a flood of 50 refusals."""
    from types import SimpleNamespace

    from rpcworker.engine.telling import Refusals

    refusals = Refusals(LogLimiter(clock=clock))
    binding: Any = SimpleNamespace(name="api")
    message = SimpleNamespace(
        delivery_info={"exchange": "ex", "routing_key": "rk"},
        content_type="application/x-python-serialize",
    )
    caplog.set_level(logging.WARNING, logger="rpcworker.engine")
    for i in range(50):
        refusals.log(binding, message, f"reason {i}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and all("binding api: message (exchange 'ex'" in x for x in lines)
    assert lines[0].endswith("refused: reason 0")
    clock.now += 10
    refusals.summarise()  # the loop's tick
    assert caplog.records[-1].getMessage() == (
        "binding api: 40 more messages refused in the last 10 s (last reason: reason 49)"
    )
    refusals.log(binding, message, "again")
    assert len(caplog.records) == 12 and caplog.records[-1].getMessage().endswith("again")
    for i in range(15):
        refusals.log(binding, message, f"late {i}")
    refusals.summarise(final=True)  # a stop: the open window is summarised
    assert caplog.records[-1].getMessage() == (
        "binding api: 6 more messages refused in the last 10 s (last reason: late 14)"
    )
