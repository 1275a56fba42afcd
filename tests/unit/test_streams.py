"""Where a process reads a shared stream from: no gap, no replay, start at the end."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from oslo_config import cfg

from rpcworker.engine.budget import Budget
from rpcworker.engine.events import Stats
from rpcworker.engine.intake import Intake
from rpcworker.engine.streams import START, Cursor, Streams
from rpcworker.engine.subscriptions import Subscription
from rpcworker.engine.telling import Teller
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.outcomes import Action, Happened
from tests.fakes import AFTER


def msg(offset: int | None) -> SimpleNamespace:
    return SimpleNamespace(headers={} if offset is None else {"x-stream-offset": offset})


def test_a_new_process_starts_at_the_next_message() -> None:
    assert Cursor().offset() == START == "next"


def test_a_restart_on_the_same_connection_goes_on_after_the_highest_received() -> None:
    c = Cursor()
    assert [c.take(o) for o in (10, 11, 12)] == [True, True, True]
    assert c.offset() == 13


def test_after_a_loss_it_resumes_at_the_first_delivery_no_handler_took() -> None:
    c = Cursor()
    for o in (10, 11, 12, 13):
        c.take(o)
    c.lost(12)  # waited for a thread when the connection went
    c.lost(13)
    assert c.offset() == 12
    # the broker sends 12, 13 again and what came after: each runs once
    assert [c.take(o) for o in (12, 13, 14)] == [True, True, True]
    assert c.offset() == 15


def test_what_was_handled_or_still_ran_is_not_run_again() -> None:
    c = Cursor()
    for o in (1, 2, 3):
        c.take(o)
    c.lost(1)  # 2 and 3 ran (or were running) when the connection went
    assert c.offset() == 1
    assert [c.take(o) for o in (1, 2, 3, 4)] == [True, False, False, True]


def test_a_cancelled_stream_starts_at_its_end_again() -> None:
    c = Cursor()
    c.take(5)
    c.lost(5)
    c.reset()
    assert c.offset() == "next" and c.take(0)  # a re-created stream counts from 0


def test_streams_by_queue_and_deliveries_without_an_offset() -> None:
    s = Streams(["t_fanout"])
    assert s.take("t_fanout", msg(7)) and not s.take("t_fanout", msg(7))
    assert s.take("t_fanout", msg(None))  # no header: nothing to judge by, it runs
    assert s.take("other", msg(7)) and s.take("other", msg(7))  # not a stream
    s.lost("t_fanout", msg(7))
    assert s.cursors["t_fanout"].offset() == 7


class _Settle:
    """What Intake asks of the session's Settle, recorded."""

    def __init__(self) -> None:
        self.taken: list[object] = []
        self.settled: list[tuple[Any, Any]] = []

    def received(self, message: object) -> None:
        self.taken.append(message)

    def settle(self, d: object, outcome: object) -> None:
        self.settled.append((d, outcome))


def test_a_delivery_the_process_had_is_counted_and_acked_unrun() -> None:
    conf = cfg.ConfigOpts()
    conf.register_opts([cfg.IntOpt("max_message_size", default=1 << 20)])
    conf([])
    streams = Streams(["t_fanout"])
    streams.take("t_fanout", msg(5))  # handled before the connection was lost
    stats = Stats()
    inflight: Any = None  # never reached: the delivery does not run
    intake = Intake(conf, inflight, CompletedCache(8), stats, Budget(0, 1 << 20), Teller(), streams)
    settle: Any = _Settle()
    intake.settle = settle
    message = SimpleNamespace(headers={"x-stream-offset": 5}, body=b"{}")
    intake.on_stream_message(Subscription(AFTER, object(), "t_fanout", False), message)
    [(d, outcome)] = settle.settled
    assert outcome.action is Action.ACK and d.queue == "t_fanout"
    assert [n.happened for n in outcome.notes] == [Happened.DUPLICATE]
    assert settle.taken == [message] and stats.deliveries == 1
