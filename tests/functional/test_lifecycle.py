"""The daemon's lifecycle: signals, graceful stop, draining, entry points.

The real daemon runs as a subprocess against the real RabbitMQ; the test
handler ``recorder`` writes one JSON line per handled message so the tests can
see what ran, and when.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from rpcworker_testplugin import read_records

from tests.functional.conftest import BROKER_URL, broker_section, consumer_count, message_count
from tests.functional.support import cast, delete_entities, plain_rpc, tags
from tests.helpers import wait_for

# -- helpers -------------------------------------------------------------------------


def records(path: Path, kind: str | None = None, method: str | None = None) -> list[dict]:
    return [
        r
        for r in read_records(str(path))
        if (kind is None or r["kind"] == kind) and (method is None or r.get("method") == method)
    ]


def fetch_all(queue: str) -> list[Any]:
    """Take every ready message off ``queue`` (acking them) and return the bodies."""
    bodies = []
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        q = kombu.Queue(queue, no_declare=True)(conn.channel())
        while (msg := q.get(no_ack=True, accept=["json"])) is not None:
            bodies.append(msg.decode())
    return bodies


# -- fixtures ------------------------------------------------------------------------


class Work:
    """One durable direct binding ``work`` with the recorder handler."""

    def __init__(self, uid: str, tmp_path: Path) -> None:
        self.uid = uid
        self.queue = f"q-{uid}"
        self.exchange = f"ex-{uid}"
        self.key = f"k-{uid}"
        self.records = tmp_path / f"records-{uid}.jsonl"

    def config(self, grace: int = 10, extra: str = "") -> str:
        return f"""\
[DEFAULT]
bindings = work
host = h-{self.uid}
graceful_shutdown_timeout = {grace}
{extra}
{broker_section()}
[recorder]
path = {self.records}

[binding:work]
type = direct
handler = recorder
exchange = {self.exchange}
queue = {self.queue}
routing_key = {self.key}
durable = true
"""

    def cast(self, method: str, **args: Any) -> None:
        cast(self.exchange, self.key, method, **args)

    def started(self, tag: str) -> bool:
        return any(r.get("args", {}).get("tag") == tag for r in records(self.records, "start"))

    def done(self, tag: str) -> bool:
        return tag in tags(self.records)


@pytest.fixture
def work(uid: str, tmp_path: Path) -> Iterator[Work]:
    w = Work(uid, tmp_path)
    yield w
    delete_entities((w.queue,), (w.exchange,))


def start_work(daemon_factory: Any, work: Work, grace: int = 10) -> Any:
    d = daemon_factory(work.config(grace))
    d.wait_consuming(work.queue)
    return d


# -- tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_drains_in_flight_handler(daemon_factory: Any, work: Work, signum: int) -> None:
    d = start_work(daemon_factory, work, grace=30)
    work.cast("slow", seconds=3, tag="slow")
    wait_for(lambda: work.started("slow"), 15, message="the slow handler to start")

    d.signal(signum)
    d.wait_log("Stopping: consumers cancelled", timeout=10)
    wait_for(lambda: consumer_count(work.queue) == 0, 10, message="the consumer cancelled")
    # draining: the handler is still running and the daemon waits for it
    assert d.alive()
    assert not work.done("slow")

    # published while draining: must not be taken
    work.cast("record", tag="late")

    assert d.wait_exit(timeout=30) == 0
    assert work.done("slow"), "the in-flight handler was not allowed to finish"
    assert "late" not in tags(work.records)
    # the slow message was acked (gone); only the late one is still queued
    assert message_count(work.queue) == 1
    assert fetch_all(work.queue) == [{"method": "record", "args": {"tag": "late"}, "context": {}}]
    assert "Traceback" not in d.log()


def test_graceful_shutdown_timeout_leaves_message_for_redelivery(
    daemon_factory: Any, work: Work
) -> None:
    d = start_work(daemon_factory, work, grace=1)
    work.cast("slow", seconds=30, tag="stuck")
    wait_for(lambda: work.started("stuck"), 15, message="the slow handler to start")

    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=20) == 0
    assert time.monotonic() - t0 < 8
    assert not work.done("stuck")
    assert "graceful_shutdown_timeout" in d.log()
    # unacknowledged: back in the queue for redelivery (requeued when the connection closed)
    wait_for(lambda: message_count(work.queue) == 1, 10, message="the message requeued")
    assert [b["args"]["tag"] for b in fetch_all(work.queue)] == ["stuck"]


def test_second_sigterm_stops_at_once(daemon_factory: Any, work: Work) -> None:
    d = start_work(daemon_factory, work, grace=60)
    work.cast("slow", seconds=30, tag="stuck")
    wait_for(lambda: work.started("stuck"), 15, message="the slow handler to start")

    d.signal(signal.SIGTERM)
    d.wait_log("Stopping: consumers cancelled", timeout=10)
    assert d.alive()
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=15) == 0
    assert time.monotonic() - t0 < 8
    assert not work.done("stuck")
    wait_for(lambda: message_count(work.queue) == 1, 10, message="the message requeued")
    assert [b["args"]["tag"] for b in fetch_all(work.queue)] == ["stuck"]


def test_sighup_does_not_stop_the_daemon(daemon_factory: Any, work: Work) -> None:
    d = start_work(daemon_factory, work)
    d.signal(signal.SIGHUP)
    d.wait_log("SIGHUP: bindings unchanged", timeout=10)
    assert d.alive()
    assert consumer_count(work.queue) == 1

    work.cast("record", tag="after-hup")
    wait_for(lambda: work.done("after-hup"), 15, message="the message sent after SIGHUP")
    assert d.alive()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=30) == 0


def test_call_in_flight_during_sigterm_gets_its_reply(daemon_factory: Any, work: Work) -> None:
    d = start_work(daemon_factory, work, grace=30)
    with plain_rpc() as rpc:
        corr = rpc.send(work.exchange, work.key, "slow", seconds=2, tag="inflight")
        wait_for(lambda: work.started("inflight"), 15, message="the slow call to start")
        d.signal(signal.SIGTERM)
        reply = rpc.wait(corr, timeout=20)
    assert reply == {"result": {"tag": "inflight"}}
    assert d.wait_exit(timeout=30) == 0
    assert message_count(work.queue) == 0


@pytest.mark.parametrize("launcher", ["module", "console-script"])
def test_entry_points_start_the_daemon(daemon_factory: Any, work: Work, launcher: str) -> None:
    d = daemon_factory(work.config(), f"ep-{launcher}", False)
    if launcher == "module":
        argv = [sys.executable, "-m", "rpcworker"]
    else:
        script = Path(sys.executable).parent / "rpcworker"
        assert script.exists(), f"console script {script} not installed"
        argv = [str(script)]
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            [*argv, "--config-file", str(d.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    d.wait_consuming(work.queue)
    with plain_rpc() as rpc:
        assert rpc.call(work.exchange, work.key, "record", tag=launcher) == {
            "result": {"tag": launcher}
        }
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=30) == 0
    assert "rpcworker stopped" in d.log()


def test_heartbeats_flow_while_a_handler_runs_long(daemon_factory: Any, work: Work) -> None:
    """A handler running for several heartbeat intervals must not cost the connection:
    the loop keeps servicing heartbeats, so the delivery is acked once, never redelivered."""
    heartbeat = 2
    config = work.config().replace("heartbeat = 10", f"heartbeat = {heartbeat}")
    assert f"heartbeat = {heartbeat}" in config
    d = daemon_factory(config)
    d.wait_consuming(work.queue)
    seconds = 5 * heartbeat  # the broker closes a silent connection after 2 intervals
    work.cast("slow", seconds=seconds, tag="long")
    wait_for(lambda: work.started("long"), 15, message="the long handler to start")
    wait_for(lambda: work.done("long"), seconds + 15, message="the long handler to finish")
    wait_for(
        lambda: message_count(work.queue) == 0 and consumer_count(work.queue) == 1,
        10,
        message="the queue drained with the consumer still there",
    )
    work.cast("record", tag="after")
    wait_for(lambda: work.done("after"), 15, message="a message after the long one")
    log = d.log()
    assert log.count("Connected to the broker") == 1, d.log_tail()
    assert "Connection to the broker lost" not in log and "missed" not in log
    assert [r.get("args", {}).get("tag") for r in records(work.records, "start")] == ["long"]
    assert d.stop() == 0
    assert message_count(work.queue) == 0
