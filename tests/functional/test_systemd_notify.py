"""The real daemon speaks the systemd notify protocol to a NOTIFY_SOCKET the test binds.

The test plays systemd: it binds an AF_UNIX datagram socket, starts the daemon
with NOTIFY_SOCKET and WATCHDOG_USEC pointing at it, and reads what arrives.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rpcworker.daemon.systemd import monotonic_usec
from tests.functional.conftest import (
    broker_section,
    consumer_count,
    delete_exchanges,
    delete_queues,
)
from tests.functional.test_lifecycle import cast

WATCHDOG_USEC = 2_000_000  # the daemon sends WATCHDOG=1 about every second
GRACE = 10


class Listener:
    """Reads notifications in order; ``expect()`` waits, with a deadline, for the next match."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.received: list[tuple[float, str]] = []  # (monotonic time, datagram)

    def _recv(self, deadline: float) -> str | None:
        self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            text = self.sock.recv(65536).decode()
        except TimeoutError:
            return None
        self.received.append((time.monotonic(), text))
        return text

    def expect(self, match: Callable[[str], bool] | str, timeout: float,
               on_match: Callable[[str], None] | None = None) -> str:
        """The next datagram that ``match``es (a predicate, or a line it must contain)."""
        pred = match if callable(match) else (lambda m: match in m.split("\n"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._recv(deadline)
            if text is not None and pred(text):
                if on_match is not None:
                    on_match(text)
                return text
        raise AssertionError(f"timed out after {timeout}s waiting for {match!r}; "
                             f"received: {[m for _, m in self.received][-10:]}")

    def watchdogs_since(self, start: float) -> list[float]:
        return [t for t, m in self.received if t >= start and m == "WATCHDOG=1"]

    def close(self) -> None:
        self.sock.close()


L = TypeVar("L", bound=Listener)


def notify_listener(cls: type[L], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    watchdog_usec: int = WATCHDOG_USEC) -> L:
    """A ``cls`` bound in tmp_path, and NOTIFY_SOCKET/WATCHDOG_USEC set for daemons started
    from now on (conftest's Daemon.start passes os.environ)."""
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes"
    lst = cls(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return lst


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    lst = notify_listener(Listener, tmp_path, monkeypatch)
    yield lst
    lst.close()


@pytest.fixture
def names(uid: str) -> Iterator[dict[str, str]]:
    n = {"topic": f"sd-{uid}", "host": f"sdh-{uid}", "queue": f"sdq-{uid}",
         "exchange": f"sdx-{uid}"}
    yield n
    delete_queues(n["topic"], f"{n['topic']}.{n['host']}", n["queue"])
    delete_exchanges(n["exchange"])


def config(n: dict[str, str]) -> str:
    return f"""\
[DEFAULT]
bindings = rpc, jobs
host = {n['host']}
graceful_shutdown_timeout = {GRACE}
{broker_section()}
[binding:rpc]
type = rpc
handler = echo
topic = {n['topic']}

[binding:jobs]
type = direct
handler = echo
exchange = {n['exchange']}
queue = {n['queue']}
routing_key = k
"""


def queues(n: dict[str, str]) -> list[str]:
    return [n["topic"], f"{n['topic']}.{n['host']}", n["queue"]]


def assert_watchdog_keeps_coming(listener: Listener, count: int, timeout: float) -> None:
    start = time.monotonic()
    for _ in range(count):
        listener.expect("WATCHDOG=1", timeout)
    stamps = listener.watchdogs_since(start)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # rate-limited to WATCHDOG_USEC/2 (receive jitter aside), and well within WATCHDOG_USEC
    assert all(0.8 <= g <= 3.0 for g in gaps), gaps


def test_ready_status_watchdog_reload_and_stop(daemon_factory: Any, listener: Listener,
                                               names: dict[str, str]) -> None:
    d = daemon_factory(config(names))
    assert d.proc is not None
    pid = d.proc.pid
    consumers: dict[str, int] = {}

    def freeze_and_count(_: str) -> None:
        # READY=1 must mean "consuming": stop the daemon where it is and look
        os.kill(pid, signal.SIGSTOP)
        try:
            consumers.update({q: consumer_count(q) for q in queues(names)})
        finally:
            os.kill(pid, signal.SIGCONT)

    ready = listener.expect("READY=1", 60, on_match=freeze_and_count)
    assert consumers == {q: 1 for q in queues(names)}, (consumers, d.log_tail())
    status = re.search(r"^STATUS=(.*)$", ready, re.M)
    assert status and re.search(r"\b2 binding", status.group(1)), ready
    assert re.search(r"\b0 reconnect", status.group(1)), ready

    assert_watchdog_keeps_coming(listener, 3, timeout=WATCHDOG_USEC / 1e6 + 2)

    before = monotonic_usec()
    d.signal(signal.SIGHUP)
    reloading = listener.expect("RELOADING=1", 10)
    after = monotonic_usec()
    usec = re.search(r"^MONOTONIC_USEC=(\d+)$", reloading, re.M)
    assert usec and before <= int(usec.group(1)) <= after, reloading
    listener.expect("READY=1", 10)
    assert d.alive()

    d.signal(signal.SIGTERM)
    stopping = listener.expect("STOPPING=1", 10)
    assert re.search(r"^STATUS=.+", stopping, re.M), stopping
    extend = listener.expect(lambda m: m.startswith("EXTEND_TIMEOUT_USEC="), 10)
    assert int(extend.split("=", 1)[1]) >= GRACE * 1_000_000, extend
    assert d.wait_exit(30) == 0, d.log_tail()
    assert "Traceback" not in d.log(), d.log_tail()


def test_watchdog_keeps_coming_while_a_handler_runs_and_while_draining(
        daemon_factory: Any, listener: Listener, names: dict[str, str]) -> None:
    d = daemon_factory(config(names))
    listener.expect("READY=1", 60)
    cast(names["exchange"], "k", "sleep", seconds=5)
    # the handler sleeps in a pool thread: the loop (and its watchdog) go on
    assert_watchdog_keeps_coming(listener, 2, timeout=WATCHDOG_USEC / 1e6 + 2)

    d.signal(signal.SIGTERM)
    stopping = listener.expect("STOPPING=1", 10)
    assert "draining 1 in-flight" in stopping, stopping  # the sleep is still running
    listener.expect(lambda m: m.startswith("EXTEND_TIMEOUT_USEC="), 10)
    # draining: consumers are cancelled, the loop still runs and still feeds the watchdog
    listener.expect("WATCHDOG=1", WATCHDOG_USEC / 1e6 + 2)
    assert d.alive()
    assert d.wait_exit(30) == 0, d.log_tail()
