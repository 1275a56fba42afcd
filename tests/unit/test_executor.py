from __future__ import annotations

import gc
import select
import threading
import time
import weakref

from rpcworker.engine.executor import Executor


def test_completion_wakes_the_pipe_and_comes_back_in_order_of_finish() -> None:
    ex = Executor(2)
    gate = threading.Event()
    try:
        ex.submit(1, lambda: "one")
        ex.submit(2, gate.wait, 5)
        readable, _, _ = select.select([ex.fileno()], [], [], 5)
        assert readable == [ex.fileno()]
        done = ex.completed()
        assert done == [(1, "one")] and ex.pending == 1
        gate.set()
        select.select([ex.fileno()], [], [], 5)
        assert ex.completed() == [(2, True)] and ex.pending == 0
        assert select.select([ex.fileno()], [], [], 0)[0] == []
    finally:
        ex.shutdown(wait=True)


def test_exceptions_are_returned_not_raised() -> None:
    ex = Executor(1)
    try:

        def boom() -> None:
            raise RuntimeError("x")

        ex.submit(7, boom)
        select.select([ex.fileno()], [], [], 5)
        [(token, result)] = ex.completed()
        assert token == 7 and isinstance(result, RuntimeError)
    finally:
        ex.shutdown(wait=True)


def test_many_completions_are_never_lost() -> None:
    ex = Executor(8)
    got: list[int] = []
    try:
        for i in range(2000):
            ex.submit(i, lambda: None)
        while len(got) < 2000:
            select.select([ex.fileno()], [], [], 5)
            got.extend(token for token, _ in ex.completed())
        assert sorted(got) == list(range(2000)) and ex.pending == 0
    finally:
        ex.shutdown(wait=True)


def test_no_lost_wake_up_under_contention() -> None:
    """Every completion is followed by a readable pipe until completed() returns it."""
    ex = Executor(16)
    try:
        for round_ in range(3000):
            for i in range(16):
                ex.submit(round_ * 16 + i, lambda: None)
            got = 0
            while got < 16:
                readable, _, _ = select.select([ex.fileno()], [], [], 0.5)
                assert readable, f"round {round_}: completions pending but no wake-up"
                got += len(ex.completed())
        assert ex.pending == 0
    finally:
        ex.shutdown(wait=True)


def test_a_thread_does_not_keep_its_last_job_alive() -> None:
    """Once a job's result is back, no handler thread holds its arguments (a delivery,
    with its body and decoded value): each thread waiting for its next job held the last
    one before, 15 MB a thread after a flood of large messages."""

    class Job:
        pass

    ex = Executor(2)
    try:
        refs = []
        for token in range(4):
            job = Job()
            refs.append(weakref.ref(job))
            ex.submit(token, lambda j: None, job)
        del job
        done: list[tuple[int, object]] = []
        deadline = time.monotonic() + 5
        while len(done) < 4 and time.monotonic() < deadline:
            select.select([ex.fileno()], [], [], 0.1)
            done += ex.completed()
        assert len(done) == 4
        gc.collect()
        assert [r() for r in refs] == [None] * 4
    finally:
        ex.shutdown(wait=True)
