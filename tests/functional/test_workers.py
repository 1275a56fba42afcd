"""``workers = 2``: one supervisor, two worker processes, on the real broker.

The real daemon runs as a subprocess; its worker processes are found through
/proc (children of the supervisor). The ``recorder`` handler writes the pid of
the process that handled each message.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import consumer_count, message_count
from tests.functional.support import Listener, Workers, cast, children, notify_listener, records
from tests.helpers import wait_for

WATCHDOG_USEC = 3_000_000  # the supervisor sends WATCHDOG=1 about every 1.5 s
GRACE = 10  # graceful_shutdown_timeout of tests.functional.support.Workers


def direct(uid: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "direct",
        "handler": "recorder",
        "exchange": f"ex-{uid}",
        "queue": f"q-{uid}",
        "routing_key": "k",
        **options,
    }


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Procs:
    """Worker pids seen by a test: continued and killed at teardown if still there."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def of(self, d: Any, n: int = 2, timeout: float = 30) -> list[int]:
        """Wait until the supervisor of daemon ``d`` has ``n`` children; their pids."""
        assert d.proc is not None
        pids: list[int] = wait_for(
            lambda: (lambda c: c if len(c) == n else [])(children(d.proc.pid)),
            timeout,
            message=f"{n} worker processes (log: {d.log_tail()})",
        )
        self.seen |= set(pids)
        return pids

    def cleanup(self) -> None:
        for pid in self.seen:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"rpcworker" not in f.read():
                            break
                    os.kill(pid, sig)
                except OSError:
                    break


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.cleanup()


def start(workers: Workers, uid: str, recorder_delay: float = 0.0, **binding: Any) -> Any:
    d = workers.start(
        {"jobs": direct(uid, **binding)}, default={"workers": 2}, recorder_delay=recorder_delay
    )
    wait_for(
        lambda: consumer_count(f"q-{uid}") == 2,
        30,
        message=f"2 consumers on q-{uid} (log: {d.log_tail()})",
    )
    return d


def handled_pids(d: Any, method: str = "record") -> set[int]:
    return {r["pid"] for r in records(d, kind="rpc", method=method)}


# -- processes ------------------------------------------------------------------------------


def test_a_plugin_error_exits_2_before_forking(daemon_factory: Any, uid: str) -> None:
    d = daemon_factory(f"""\
        [DEFAULT]
        workers = 2
        bindings = b
        [binding:b]
        type = direct
        handler = broken_init
        exchange = ex-{uid}
        routing_key = k
        """)
    assert d.wait_exit(30) == 2, d.log()
    lines = d.log().strip().splitlines()
    assert lines[-1].startswith("rpcworker: plugin error: [binding:b] handler:"), lines
    assert "starting 2 worker processes" not in d.log()


def test_two_worker_processes_consume_and_share_the_work(
    procs: Procs, workers: Workers, uid: str
) -> None:
    d = start(workers, uid, recorder_delay=0.05)
    pids = procs.of(d)
    assert d.proc is not None and d.proc.pid not in pids
    for i in range(20):
        cast(f"ex-{uid}", "k", "record", n=i)
    wait_for(
        lambda: len(records(d, method="record")) == 20,
        30,
        message=f"20 casts handled (log: {d.log_tail()})",
    )
    assert handled_pids(d) == set(pids)
    assert sorted(r["args"]["n"] for r in records(d, method="record")) == list(range(20))


def test_a_killed_worker_is_restarted(procs: Procs, workers: Workers, uid: str) -> None:
    d = start(workers, uid)
    before = procs.of(d)
    os.kill(before[0], signal.SIGKILL)
    after = wait_for(
        lambda: (lambda c: c if len(c) == 2 and before[0] not in c else [])(procs.of(d)),
        30,
        message="a new worker process",
    )
    assert before[1] in after
    new = (set(after) - set(before)).pop()
    wait_for(
        lambda: consumer_count(f"q-{uid}") == 2,
        30,
        message=f"2 consumers again (log: {d.log_tail()})",
    )
    n = 0

    def handled_by_new() -> bool:
        nonlocal n
        cast(f"ex-{uid}", "k", "record", n=n)
        n += 1
        return new in handled_pids(d)

    wait_for(handled_by_new, 30, interval=0.2, message="a cast handled by the new worker")
    assert d.alive()
    assert re.search(r"worker \d.* died \(killed by signal 9\); it is restarted", d.log()), (
        d.log_tail()
    )


def test_a_worker_that_exits_is_restarted(procs: Procs, workers: Workers, uid: str) -> None:
    # acknowledge = before: the message that kills its worker is not redelivered
    d = start(workers, uid, acknowledge="before")
    before = procs.of(d)
    cast(f"ex-{uid}", "k", "crash")
    wait_for(lambda: records(d, method="crash"), 30, message="the crash handler ran")
    crashed = records(d, method="crash")[0]["pid"]
    wait_for(
        lambda: (lambda c: len(c) == 2 and crashed not in c)(procs.of(d)),
        30,
        message=f"the worker that exited replaced (log: {d.log_tail()})",
    )
    wait_for(lambda: consumer_count(f"q-{uid}") == 2, 30, message="2 consumers again")
    assert re.search(r"worker \d.* died \(exit status 70\); it is restarted", d.log()), d.log_tail()
    assert set(procs.of(d)) & set(before) == set(before) - {crashed}
    assert d.alive()


def test_a_worker_restarted_after_a_reload_runs_the_new_configuration(
    procs: Procs, workers: Workers, uid: str
) -> None:
    d = start(workers, uid)
    q2 = f"q2-{uid}"
    workers.queues.add(q2)
    workers.exchanges.add(f"ex2-{uid}")
    d.config_path.write_text(
        d.config_path.read_text().replace("bindings = jobs", "bindings = jobs, more")
        + f"\n[binding:more]\ntype = direct\nhandler = recorder\nexchange = ex2-{uid}\n"
        f"queue = {q2}\nrouting_key = k\n"
    )
    d.signal(signal.SIGHUP)
    wait_for(
        lambda: consumer_count(q2) == 2,
        30,
        message=f"both workers on {q2} after SIGHUP (log: {d.log_tail()})",
    )
    before = procs.of(d)
    os.kill(before[0], signal.SIGKILL)
    after = wait_for(
        lambda: (lambda c: c if len(c) == 2 and before[0] not in c else [])(procs.of(d)),
        30,
        message="a new worker process",
    )
    new = (set(after) - set(before)).pop()

    def new_worker_consumes_both() -> bool:
        return any(
            f" {new} INFO rpcworker.engine" in line
            and f"more <- {q2}" in line
            and f"jobs <- q-{uid}" in line
            for line in d.log().splitlines()
        )

    wait_for(
        new_worker_consumes_both,
        30,
        message=f"the new worker consuming both bindings (log: {d.log_tail()})",
    )
    wait_for(
        lambda: consumer_count(q2) == 2 and consumer_count(f"q-{uid}") == 2,
        30,
        message="2 consumers on each queue",
    )


# -- stopping -------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_drains_a_slow_handler_in_a_worker(
    procs: Procs, workers: Workers, uid: str, signum: int
) -> None:
    d = start(workers, uid)
    pids = procs.of(d)
    cast(f"ex-{uid}", "k", "slow", seconds=3, tag="slow")
    wait_for(lambda: records(d, kind="start", method="slow"), 30, message="the slow handler")
    d.signal(signum)
    assert d.wait_exit(30) == 0, d.log_tail()
    assert [r["args"] for r in records(d, kind="rpc", method="slow")] == [{"tag": "slow"}]
    assert message_count(f"q-{uid}") == 0, "the slow message was acked"
    assert not any(alive(p) for p in pids)
    assert "Traceback" not in d.log(), d.log_tail()
    assert "Caught SIGINT signal, instantaneous" not in d.log()


def test_graceful_shutdown_timeout_leaves_running_work_unacked(
    procs: Procs, workers: Workers, uid: str
) -> None:
    # (a later line wins: this overrides the 10 s that Workers writes)
    d = workers.start({"jobs": direct(uid)}, default={"workers": 2, "graceful_shutdown_timeout": 1})
    wait_for(lambda: consumer_count(f"q-{uid}") == 2, 30, message="2 consumers")
    pids = procs.of(d)
    cast(f"ex-{uid}", "k", "hang", seconds=120)
    wait_for(lambda: records(d, kind="start", method="hang"), 30, message="the hung handler")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0, d.log_tail()
    assert time.monotonic() - started < 8
    assert "graceful_shutdown_timeout (1 s) reached" in d.log(), d.log_tail()
    wait_for(
        lambda: message_count(f"q-{uid}") == 1,
        10,
        message="the hung message back in its queue, for redelivery",
    )
    assert not any(alive(p) for p in pids)


# -- systemd notify ---------------------------------------------------------------------------


class CredListener(Listener):
    """A Listener that also records the pid of the sender of each datagram (SO_PASSCRED)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.senders: set[int] = set()

    def _recv(self, deadline: float) -> str | None:
        self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(
                65536, socket.CMSG_SPACE(struct.calcsize("3i"))
            )
        except TimeoutError:
            return None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                self.senders.add(struct.unpack("3i", payload[: struct.calcsize("3i")])[0])
        text = data.decode()
        self.received.append((time.monotonic(), text))
        return text

    def silence(self, seconds: float, since: float, timeout: float) -> None:
        """Wait until no WATCHDOG=1 has come for ``seconds`` (counting from ``since``)."""
        last = since
        deadline = time.monotonic() + timeout
        while time.monotonic() - last < seconds:
            if time.monotonic() > deadline:
                stamps = [round(t - since, 1) for t in self.watchdogs_since(since)]
                raise AssertionError(f"WATCHDOG=1 kept coming: at {stamps} s")
            if self._recv(min(deadline, last + seconds)) == "WATCHDOG=1":
                last = time.monotonic()

    def count(self, line: str) -> int:
        return sum(1 for _, m in self.received if line in m.split("\n"))


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CredListener]:
    lst = notify_listener(CredListener, tmp_path, monkeypatch, WATCHDOG_USEC)
    yield lst
    lst.close()


def test_systemd_notify_through_the_supervisor(
    procs: Procs, listener: CredListener, workers: Workers, uid: str
) -> None:
    counted: dict[str, int] = {}
    q = f"q-{uid}"
    d = workers.start({"jobs": direct(uid)}, default={"workers": 2})
    ready = listener.expect(
        "READY=1", 60, on_match=lambda _: counted.update(consumers=consumer_count(q))
    )
    assert counted["consumers"] == 2, (counted, d.log_tail())
    status = re.search(r"^STATUS=(.*)$", ready, re.M)
    assert status and status.group(1).startswith(
        "2/2 workers consuming: consuming 1 of 1 binding(s); 0 reconnect(s)"
    ), ready
    pids = procs.of(d)

    # WATCHDOG=1 keeps coming while both consume loops report
    start = time.monotonic()
    for _ in range(3):
        listener.expect("WATCHDOG=1", WATCHDOG_USEC / 1e6 + 2)
    stamps = listener.watchdogs_since(start)
    assert all(0.5 <= b - a <= 3.0 for a, b in zip(stamps, stamps[1:], strict=False)), stamps

    # one stuck worker: the supervisor stops sending WATCHDOG=1
    stopped_at = time.monotonic()
    os.kill(pids[1], signal.SIGSTOP)
    try:
        listener.silence(2 * WATCHDOG_USEC / 1e6, since=stopped_at, timeout=20)
        assert "WATCHDOG=1 is withheld" in d.log(), d.log_tail()
        assert d.alive()
    finally:
        os.kill(pids[1], signal.SIGCONT)
    listener.expect("WATCHDOG=1", WATCHDOG_USEC / 1e6 + 3)
    assert listener.count("READY=1") == 1

    # SIGHUP: RELOADING=1, then READY=1 once both workers have reloaded
    d.signal(signal.SIGHUP)
    reloading = listener.expect("RELOADING=1", 10)
    assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.M), reloading
    listener.expect("READY=1", 20)
    assert listener.count("READY=1") == 2
    assert procs.of(d) == pids, "a reload does not restart the workers"

    d.signal(signal.SIGTERM)
    stopping = listener.expect("STOPPING=1", 10)
    assert re.search(r"^STATUS=stopping; ", stopping, re.M), stopping
    extend = listener.expect(lambda m: m.startswith("EXTEND_TIMEOUT_USEC="), 10)
    assert int(extend.split("=", 1)[1]) >= GRACE * 1_000_000, extend
    assert d.wait_exit(30) == 0, d.log_tail()
    assert d.proc is not None
    assert listener.senders == {d.proc.pid}, "only the supervisor talks to NOTIFY_SOCKET"
    assert "Traceback" not in d.log(), d.log_tail()
