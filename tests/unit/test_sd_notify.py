"""SystemdNotifier: the sd_notify datagrams, the watchdog rate, and never raising."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpcworker.daemon import systemd
from rpcworker.daemon.systemd import SystemdNotifier
from rpcworker.engine.readiness import Notifier, NullNotifier


class Receiver:
    """What systemd does: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        out: list[str] = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(2)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes"
    return path


@pytest.fixture
def receiver(socket_path: str) -> Iterator[Receiver]:
    r = Receiver(socket_path)
    yield r
    r.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_message_has_the_exact_sd_notify_text(receiver: Receiver, socket_path: str) -> None:
    n: Notifier = SystemdNotifier(socket_path)
    n.ready("consuming 2 binding(s); 0 reconnect(s)")
    assert receiver.recv() == "READY=1\nSTATUS=consuming 2 binding(s); 0 reconnect(s)"
    n.status("reconnecting to the broker (Connection refused)")
    assert receiver.recv() == "STATUS=reconnecting to the broker (Connection refused)"
    n.stopping("draining 3 in-flight message(s)")
    assert receiver.recv() == "STOPPING=1\nSTATUS=draining 3 in-flight message(s)"
    n.extend_timeout(70)
    assert receiver.recv() == "EXTEND_TIMEOUT_USEC=70000000"
    n.extend_timeout(0.25)
    assert receiver.recv() == "EXTEND_TIMEOUT_USEC=250000"


def test_reloading_carries_the_monotonic_clock_in_usec(
    receiver: Receiver, socket_path: str
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    SystemdNotifier(socket_path).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", receiver.recv())
    assert match, "RELOADING=1 then MONOTONIC_USEC=<integer>"
    assert before <= int(match.group(1)) <= after


def test_a_status_is_one_line(receiver: Receiver, socket_path: str) -> None:
    # a newline in STATUS= would start a new assignment (e.g. an error text saying READY=1)
    SystemdNotifier(socket_path).status("lost:\nREADY=1\r\n  again")
    assert receiver.recv() == "STATUS=lost: READY=1 again"


def test_abstract_namespace_socket() -> None:
    name = f"rpcworker-test-{uuid.uuid4().hex}"
    r = Receiver("\0" + name)
    try:
        n = SystemdNotifier("@" + name)
        n.ready("ok")
        assert r.recv() == "READY=1\nSTATUS=ok"
        n.status("still ok")
        assert r.recv() == "STATUS=still ok"
    finally:
        r.close()


def test_one_socket_is_reused(
    receiver: Receiver, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[socket.socket] = []
    real = socket.socket

    def counting(*args: object, **kwargs: object) -> socket.socket:
        s = real(*args, **kwargs)  # type: ignore[arg-type]
        created.append(s)
        return s

    n = SystemdNotifier(socket_path)
    monkeypatch.setattr(systemd.socket, "socket", counting)
    for i in range(5):
        n.status(f"s{i}")
    assert [receiver.recv() for _ in range(5)] == [f"STATUS=s{i}" for i in range(5)]
    assert len(created) == 1
    assert created[0].getblocking() is False
    n.close()


def test_watchdog_is_sent_at_most_every_half_interval(receiver: Receiver, socket_path: str) -> None:
    clock = Clock()
    n = SystemdNotifier(socket_path, watchdog_usec=2_000_000, clock=clock)
    sent_at: list[float] = []
    for step in [0, 0.25, 0.5, 0.75, 0.25, 0.25, 0.5, 0.25, 0.75, 0.125]:  # loop iterations
        clock.now += step
        n.watchdog()
        sent_at += [clock.now for _ in receiver.pending()]
    # WATCHDOG_USEC = 2 s: first call at once, then no more often than every second
    assert sent_at == [1000.0, 1001.5, 1002.5, 1003.5]


def test_watchdog_message_text(receiver: Receiver, socket_path: str) -> None:
    SystemdNotifier(socket_path, watchdog_usec=30_000_000).watchdog()
    assert receiver.recv() == "WATCHDOG=1"


def test_no_watchdog_without_watchdog_usec_or_for_another_pid(
    receiver: Receiver, socket_path: str
) -> None:
    clock = Clock()
    off = SystemdNotifier(socket_path, clock=clock)
    other = SystemdNotifier(
        socket_path, watchdog_usec=1_000_000, watchdog_pid=os.getpid() + 1, clock=clock
    )
    mine = SystemdNotifier(
        socket_path, watchdog_usec=1_000_000, watchdog_pid=os.getpid(), clock=clock
    )
    for _ in range(3):
        clock.now += 10
        off.watchdog()
        other.watchdog()
    assert receiver.pending() == []
    mine.watchdog()
    assert receiver.recv() == "WATCHDOG=1"


def test_from_environment() -> None:
    assert isinstance(systemd.from_environment({}), NullNotifier)
    assert isinstance(systemd.from_environment({"NOTIFY_SOCKET": ""}), NullNotifier)
    for unsupported in ("relative/path", "vsock:2:1234", "@"):
        assert isinstance(systemd.from_environment({"NOTIFY_SOCKET": unsupported}), NullNotifier)

    n = systemd.from_environment({"NOTIFY_SOCKET": "/run/systemd/notify"})
    assert isinstance(n, SystemdNotifier)
    assert n.address == "/run/systemd/notify" and n.watchdog_usec is None

    env = {"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "30000000"}
    n = systemd.from_environment(env)
    assert isinstance(n, SystemdNotifier) and n.watchdog_usec == 30_000_000

    n = systemd.from_environment({**env, "WATCHDOG_PID": str(os.getpid())})
    assert isinstance(n, SystemdNotifier) and n.watchdog_usec == 30_000_000

    n = systemd.from_environment({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert isinstance(n, SystemdNotifier) and n.watchdog_usec is None

    for bad in (
        {**env, "WATCHDOG_USEC": "soon"},
        {**env, "WATCHDOG_USEC": "0"},
        {**env, "WATCHDOG_PID": "me"},
    ):
        n = systemd.from_environment(bad)
        assert isinstance(n, SystemdNotifier)
        assert n.watchdog_usec is None or "WATCHDOG_PID" in bad


def everything(n: SystemdNotifier) -> None:
    n.ready("r")
    n.status("s")
    n.watchdog()
    n.stopping("x")
    n.extend_timeout(1.5)
    n.reloading()


@pytest.mark.parametrize(
    "address",
    [
        "missing",  # no such file
        "file",  # a regular file, not a socket: connection refused
        "nodir/notify",  # no such directory
        "long",  # longer than sun_path
        "nul",  # an embedded NUL
    ],
    ids=str,
)
def test_an_unusable_socket_never_raises(
    tmp_path: Path, address: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = {
        "missing": str(tmp_path / "missing"),
        "file": str(tmp_path / "file"),
        "nodir/notify": str(tmp_path / "nodir" / "notify"),
        "long": "/" + "x" * 200,
        "nul": str(tmp_path / "a\0b"),
    }[address]
    (tmp_path / "file").write_text("not a socket")
    n = SystemdNotifier(target, watchdog_usec=1)
    with caplog.at_level(logging.DEBUG, logger="rpcworker.daemon.systemd"):
        for _ in range(3):
            everything(n)
        assert n.send("STATUS=x") is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "the first failure is a warning; the rest are not"
    assert "NOTIFY_SOCKET" in warnings[0].getMessage()


def test_a_closed_receiver_never_raises_and_a_new_one_is_reached(socket_path: str) -> None:
    r = Receiver(socket_path)
    n = SystemdNotifier(socket_path)
    n.status("one")
    assert r.recv() == "STATUS=one"
    r.close()
    everything(n)  # the path is still there, nobody listens: ECONNREFUSED
    os.unlink(socket_path)
    everything(n)  # and now ENOENT
    r = Receiver(socket_path)  # systemd re-executed: a new socket on the same path
    try:
        n.status("two")
        assert r.recv() == "STATUS=two"
    finally:
        r.close()


def test_a_receiver_that_does_not_read_never_blocks(receiver: Receiver, socket_path: str) -> None:
    n = SystemdNotifier(socket_path)
    started = time.monotonic()
    results = [n.send(f"STATUS={i} " + "x" * 1000) for i in range(2000)]
    assert time.monotonic() - started < 5
    assert results[0] is True and results[-1] is False  # the queue filled up: EAGAIN
    n.status("after")  # still no exception


def test_null_notifier_accepts_everything() -> None:
    n: Notifier = NullNotifier()
    n.ready("r")
    n.status("s")
    n.watchdog()
    n.stopping("x")
    n.extend_timeout(1.0)
    n.reloading()
