"""Fault injection: nothing is lost when the broker, the worker or the link fails mid-stream.

Each test runs the real daemon on a durable direct binding (durable exchange and
queue, `recorder` handler) and publishes a stream of casts ``{"method": "record",
"args": {"id": i}}``: persistent, publisher-confirmed, paced so that the stream
lasts a few seconds. A publish that is not confirmed is re-sent on a new
connection, so the test itself loses nothing. Once a share of the ids has been
handled, the fault is injected; then every id must be handled at least once and
the queue must end with nothing ready and nothing unacknowledged. Duplicates
(at-least-once) are counted and reported in one ``FAULT ...`` line per test, also
appended to $RPCWORKER_FAULT_REPORT when it is set (see faults_report.py).

RabbitMQ is always running again when a test ends (``broker_stopped`` restarts
it in a ``finally``). Run under the shared lock:
``flock /tmp/rpcworker-broker.lock .venv/bin/pytest -q -s tests/functional/test_faults.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    broker_section,
    broker_up,
    consumer_count,
    delete_exchanges,
    delete_queues,
)
from tests.functional.faults_report import Tally, handled_ids, report, tally
from tests.functional.stream import COUNT, STREAM_TIMEOUT, Stream
from tests.functional.support import (
    broker_stopped,
    queue_drained,
    queue_info,
    rabbitmqctl,
    start_broker,
)
from tests.functional.tcpproxy import TCPProxy
from tests.helpers import wait_for

LOST = "Connection to the broker lost"
CONSUMING = "Consuming:"

#: the stream (tests/functional/stream.py: COUNT ids at RATE per second) and the recorder's delay.
#: 16 handler threads x 1/DELAY = 320 messages/s: the stream (about 5 s) runs a little
#: ahead of the worker, whose prefetch window is thus full of unacked deliveries when
#: a fault lands
RESTART_COUNT = 5000
if os.environ.get("RPCWORKER_TEST_BROKER_SERIES", "").startswith("4"):
    # a 4.x node's rabbitmqctl answers in about 0.8 s and a stop_app/start_app takes about
    # 3.7 s (2 on 3.10): a longer stream, so that the third restart still lands mid-stream
    RESTART_COUNT = 10000
DELAY = 0.05
#: after the stream: every id handled, then the queue empty and nothing unacked
HANDLED_TIMEOUT = 60.0
DRAINED_TIMEOUT = 30.0


# -- the broker ------------------------------------------------------------------------


def queues_starting_with(prefix: str) -> list[str]:
    out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", timeout=60)
    return [name for name in out.stdout.split() if name.startswith(prefix)]


# -- the rig: names, config, daemons, the final check ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Where:
    """The stream when a fault was injected."""

    handled: int  #: distinct ids handled
    confirmed: int  #: ids published and confirmed
    unacked: int  #: deliveries the worker held unacknowledged (rabbitmqctl, just before)

    def __str__(self) -> str:
        return f"{self.handled} handled, {self.confirmed} sent, {self.unacked} unacked"


class Rig:
    """One durable direct binding on the recorder, the stream, and the final tally."""

    def __init__(self, factory: Any, tmp_path: Path, uid: str) -> None:
        self.factory = factory
        self.uid = uid
        self.exchange = f"faults-ex-{uid}"
        self.queue = f"faults-q-{uid}"
        self.key = f"faults-k-{uid}"
        self.host = f"faults-{uid}"
        self.records = tmp_path / f"records-{uid}.jsonl"
        self.daemons: list[Any] = []
        self.stream: Stream | None = None
        self.proxy: TCPProxy | None = None

    def config(self, broker: str | None = None, delay: float = DELAY) -> str:
        return f"""\
[DEFAULT]
bindings = faults
host = {self.host}
graceful_shutdown_timeout = 10

{broker if broker is not None else broker_section()}
[recorder]
path = {self.records}
delay = {delay}

[binding:faults]
type = direct
handler = recorder
exchange = {self.exchange}
queue = {self.queue}
routing_key = {self.key}
durable = true
"""

    def start_worker(self, broker: str | None = None, name: str = "worker") -> Any:
        d = self.factory(self.config(broker), name=name)
        self.daemons.append(d)
        d.wait_consuming(self.queue)
        return d

    def start_stream(self, count: int = COUNT) -> Stream:
        self.stream = Stream(self.exchange, self.key, count)
        self.stream.start()
        return self.stream

    def handled(self) -> int:
        """Distinct ids handled so far."""
        return len(handled_ids(self.records)[0])

    def fault_point(self, handled: int, confirmed: int = 0, timeout: float = 60) -> Where:
        """Wait until ``handled`` distinct ids are handled and ``confirmed`` ids are sent.

        Then check that the fault is about to land mid-stream: ids are still being
        published, and the worker holds unacknowledged deliveries (the stream is paced
        a little faster than the worker handles it, so its prefetch window is full).
        """
        stream = self.stream
        assert stream is not None
        wait_for(
            lambda: self.handled() >= handled and stream.confirmed >= confirmed,
            timeout,
            interval=0.02,
            message=f"{handled} ids handled and {confirmed} sent (worker log: "
            f"{self.daemons[-1].log_tail() if self.daemons else ''})",
        )
        info = queue_info(self.queue) or {}
        where = Where(self.handled(), stream.confirmed, info.get("messages_unacknowledged", 0))
        assert where.handled < stream.count and where.confirmed < stream.count, (
            f"the stream was over before the fault: {where}"
        )
        assert where.unacked > 0, f"the worker held no delivery at the fault: {where}"
        return where

    def finish(self, fault: str, detail: str = "") -> Tally:
        """Wait for the stream, every id and an empty queue; report; assert none missing."""
        stream = self.stream
        assert stream is not None
        wait_for(stream.done, STREAM_TIMEOUT + 10, interval=0.1, message="the publisher")
        assert stream.error is None, f"publisher: {stream.error!r}"
        assert stream.confirmed == stream.count
        problems = []
        try:
            wait_for(
                lambda: self.handled() >= stream.count,
                HANDLED_TIMEOUT,
                interval=0.1,
                message=f"all {stream.count} ids handled",
            )
        except AssertionError as exc:
            problems.append(str(exc))
        try:
            wait_for(
                lambda: queue_drained(self.queue),
                DRAINED_TIMEOUT,
                interval=0.2,
                message=f"queue {self.queue} with 0 ready and 0 unacked",
            )
        except AssertionError as exc:
            problems.append(str(exc))
        extras = "; ".join(x for x in (detail, stream.describe()) if x)
        t = tally(fault, stream.confirmed, self.records, extras)
        report(t)
        assert t.missing == [], (
            f"{len(t.missing)} ids never handled, e.g. "
            f"{t.missing[:20]}; {problems}; worker log tail:\n"
            f"{self.daemons[-1].log_tail(30) if self.daemons else ''}"
        )
        assert t.unexpected == [] and t.torn == 0, t.line()
        assert not problems, problems
        return t

    def cleanup(self) -> None:
        if self.stream is not None:
            self.stream.halt()
            self.stream.join(10)
        if not broker_up():  # belt and braces: every test leaves RabbitMQ running
            start_broker()
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.stop(timeout=30)
        if self.proxy is not None:
            self.proxy.close()
        # the work queue, and what the daemon declares beside it (<queue>.retry.<ms>)
        delete_queues(self.queue, *queues_starting_with(f"{self.queue}."))
        delete_exchanges(self.exchange)


@pytest.fixture
def rig(daemon_factory: Any, tmp_path: Path, uid: str) -> Iterator[Rig]:
    # the publisher's reconnection attempts while the broker is down are expected:
    # keep pika's tracebacks out of the report
    pika_log = logging.getLogger("pika")
    level = pika_log.level
    pika_log.setLevel(logging.CRITICAL)
    r = Rig(daemon_factory, tmp_path, uid)
    try:
        yield r
    finally:
        r.cleanup()
        pika_log.setLevel(level)


def reconnections(d: Any) -> int:
    return d.log().count(CONSUMING) - 1


# -- the faults ------------------------------------------------------------------------------


def test_broker_restarted_three_times(rig: Rig) -> None:
    restarts = 3
    # one restart (stop, start, reconnect) takes about 2 s of the stream: a longer one
    count = RESTART_COUNT
    d = rig.start_worker()
    rig.start_stream(count)
    handled = 0
    points = []
    for k in range(1, restarts + 1):
        # a fifth of the stream further on each time, and the worker consuming again
        where = rig.fault_point(handled + 20, count * k // 5)
        handled = where.handled
        points.append(f"{where.handled}/{where.confirmed}/{where.unacked}")
        with broker_stopped():
            wait_for(
                lambda k=k: d.log().count(LOST) >= k,
                30,
                message=f"the worker noticing restart {k} (tail: {d.log_tail()})",
            )
        # up again: the worker reconnects and the stream goes on
        wait_for(
            lambda k=k: reconnections(d) >= k,
            60,
            message=f"reconnection {k} (tail: {d.log_tail()})",
        )
    assert d.alive()
    t = rig.finish(
        f"broker-restart x{restarts}",
        f"restarts at handled/sent/unacked {', '.join(points)}; "
        f"worker reconnected {reconnections(d)} times",
    )
    assert t.handled == count
    assert d.alive()
    assert d.stop(timeout=30) == 0


def test_worker_sigkilled_and_started_again(rig: Rig) -> None:
    d = rig.start_worker()
    rig.start_stream()
    where = rig.fault_point(COUNT // 3)
    d.signal(signal.SIGKILL)
    assert d.wait_exit(timeout=15) == -signal.SIGKILL
    # the broker has seen the connection go (its unacked messages are ready again)
    wait_for(lambda: consumer_count(rig.queue) == 0, 15, message="no consumer left")
    d2 = rig.start_worker(name="worker2")
    t = rig.finish("worker-sigkill", f"killed at {where}")
    assert t.handled == COUNT
    assert d2.alive()
    assert d2.stop(timeout=30) == 0


def test_worker_sigtermed_and_started_again(rig: Rig) -> None:
    d = rig.start_worker()
    rig.start_stream()
    where = rig.fault_point(COUNT // 3)
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=30) == 0, d.log_tail()
    wait_for(lambda: consumer_count(rig.queue) == 0, 15, message="no consumer left")
    d2 = rig.start_worker(name="worker2")
    t = rig.finish("worker-sigterm", f"stopped at {where}")
    assert t.handled == COUNT
    # a graceful stop acks what it handled: only a re-sent publish may be handled twice
    assert rig.stream is not None
    assert t.duplicates <= rig.stream.unconfirmed, t.line()
    assert d2.alive()
    assert d2.stop(timeout=30) == 0


def test_tcp_link_black_holed(rig: Rig) -> None:
    heartbeat = 2
    bound = 4 * heartbeat + 5  # a behaviour bound ("about two intervals"), not a benchmark
    proxy = rig.proxy = TCPProxy(BROKER_HOST, BROKER_PORT).start()
    broker = (
        broker_section()
        .replace(f"port = {BROKER_PORT}", f"port = {proxy.port}")
        .replace("heartbeat = 10", f"heartbeat = {heartbeat}")
        + "connect_timeout = 3\n"
    )
    d = rig.start_worker(broker=broker)
    assert proxy.accepted == 1
    rig.start_stream()
    where = rig.fault_point(COUNT // 3)

    assert proxy.blackhole() == 1  # the worker's connection: open, silent both ways
    holed = time.monotonic()
    d.wait_log(LOST, timeout=bound)
    noticed = time.monotonic() - holed
    lost_line = next(line for line in d.log().splitlines() if LOST in line)
    print(f"\nblack-holed link noticed after {noticed:.1f} s: {lost_line}")
    assert d.alive()
    assert proxy.held() >= 1  # nothing was closed: the worker gave up on its own

    # while the link is down, a new connection is accepted but never answered: the
    # worker's handshake must time out (connect_timeout) rather than hang
    wait_for(
        lambda: proxy.held_accepted >= 1,
        30,
        message=f"a reconnection attempt during the outage (tail: {d.log_tail()})",
    )
    proxy.restore()
    wait_for(
        lambda: proxy.accepted >= 2 and reconnections(d) >= 1,
        60,
        message=f"a reconnection through the proxy (tail: {d.log_tail()})",
    )
    back = time.monotonic() - holed
    d.wait_consuming(rig.queue)

    t = rig.finish(
        f"tcp-blackhole heartbeat={heartbeat}s",
        f"black-holed at {where}; loss noticed after {noticed:.1f} s, "
        f"consuming again after {back:.1f} s",
    )
    assert t.handled == COUNT
    assert noticed <= bound
    assert d.alive()
    assert d.stop(timeout=30) == 0
