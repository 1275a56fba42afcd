"""Where a process reads a shared stream from: no gap, no replay, start at the end."""

from __future__ import annotations

from types import SimpleNamespace

from rpcworker.engine.streams import START, Cursor, Streams


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
