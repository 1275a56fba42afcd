"""The real daemon speaks the systemd notify protocol to a NOTIFY_SOCKET the test binds.

The test plays systemd: it binds an AF_UNIX datagram socket, starts the daemon
with NOTIFY_SOCKET and WATCHDOG_USEC pointing at it, and reads what arrives.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rpcworker.daemon.systemd import monotonic_usec
from tests.functional.conftest import (
    broker_section,
    consumer_count,
    delete_exchanges,
    delete_queues,
)
from tests.functional.support import WATCHDOG_USEC, Listener, cast, notify_listener

GRACE = 10


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    lst = notify_listener(Listener, tmp_path, monkeypatch)
    yield lst
    lst.close()


@pytest.fixture
def names(uid: str) -> Iterator[dict[str, str]]:
    n = {
        "topic": f"sd-{uid}",
        "host": f"sdh-{uid}",
        "queue": f"sdq-{uid}",
        "exchange": f"sdx-{uid}",
    }
    yield n
    delete_queues(n["topic"], f"{n['topic']}.{n['host']}", n["queue"])
    delete_exchanges(n["exchange"])


def config(n: dict[str, str]) -> str:
    return f"""\
[DEFAULT]
bindings = rpc, jobs
host = {n["host"]}
graceful_shutdown_timeout = {GRACE}
{broker_section()}
[binding:rpc]
type = rpc
handler = echo
topic = {n["topic"]}

[binding:jobs]
type = direct
handler = echo
exchange = {n["exchange"]}
queue = {n["queue"]}
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


def test_ready_status_watchdog_reload_and_stop(
    daemon_factory: Any, listener: Listener, names: dict[str, str]
) -> None:
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
    daemon_factory: Any, listener: Listener, names: dict[str, str]
) -> None:
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
