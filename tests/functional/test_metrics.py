"""``[metrics] listen``: the real daemon's /metrics, /healthz and /readyz during a run."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import kombu

from tests.functional.conftest import BROKER_HOST, BROKER_PORT, BROKER_URL, broker_section
from tests.functional.support import cast, children, delete_entities, free_port, records, scrape
from tests.functional.tcpproxy import TCPProxy
from tests.helpers import http_get as get
from tests.helpers import wait_for


def config(
    uid: str,
    tmp: Path,
    port: int,
    workers: int = 1,
    broker: str = "",
    binding: str = "",
    recorder: str = "",
) -> str:
    text = (
        textwrap.dedent(f"""\
        [DEFAULT]
        bindings = m
        workers = {workers}
        graceful_shutdown_timeout = 10

        """)
        + (broker or broker_section())
        + "connect_timeout = 2\n\n"
        + textwrap.dedent(f"""\
        [binding:m]
        type = direct
        handler = recorder
        exchange = ex-{uid}
        queue = q-{uid}
        routing_key = k
        max_retries = 0

        [recorder]
        path = {tmp}/records.jsonl

        [metrics]
        listen = 127.0.0.1:{port}
        """)
    )
    return text.replace("max_retries = 0\n", f"max_retries = 0\n{binding}").replace(
        "records.jsonl\n", f"records.jsonl\n{recorder}"
    )


def publish_malformed(exchange: str) -> None:
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        kombu.Producer(conn.channel(), auto_declare=False).publish(
            b"{not json",
            exchange=exchange,
            routing_key="k",
            content_type="application/json",
            content_encoding="utf-8",
            retry=False,
        )


def wait_ready(port: int, d: Any) -> str:
    return wait_for(
        lambda: (
            (get(port, "/readyz")[0] == 200 and get(port, "/readyz")[1])
            or (not d.alive() and "exited")
        ),
        30,
        message=f"/readyz 200 (log: {d.log_tail()})",
    )


def settled(port: int) -> float:
    m = scrape(port)
    return m[("rpcworker_acked_total", "m")] + m[("rpcworker_rejected_total", "m")]


def test_counters_follow_the_messages(daemon_factory: Any, tmp_path: Path, uid: str) -> None:
    port = free_port()
    d = daemon_factory(config(uid, tmp_path, port))
    d.records_path = str(tmp_path / "records.jsonl")
    try:
        assert wait_ready(port, d) == "consuming 1 of 1 binding(s); 0 reconnect(s)\n"
        assert get(port, "/healthz") == (200, "consume loop alive\n")
        before = scrape(port)
        assert before[("rpcworker_received_total", "m")] == 0
        assert before[("rpcworker_connected", "")] == 1
        assert before[("rpcworker_binding_consuming", "m")] == 1
        for i in range(5):
            cast(f"ex-{uid}", "k", "record", i=i)
        cast(f"ex-{uid}", "k", "fail")
        publish_malformed(f"ex-{uid}")
        wait_for(lambda: settled(port) >= 7, 30, message="7 deliveries settled")
        m = scrape(port)
        assert m[("rpcworker_received_total", "m")] == 7
        assert m[("rpcworker_acked_total", "m")] == 5
        # no parking lot: the failed cast (max_retries 0) and the malformed message are
        # dead-lettered by rejecting them
        assert m[("rpcworker_rejected_total", "m")] == 2
        assert m[("rpcworker_dead_lettered_total", "m")] == 2
        assert m[("rpcworker_failed_total", "m")] == 1
        assert m[("rpcworker_retried_total", "m")] == 0
        assert m[("rpcworker_handler_duration_seconds_count", "m")] == 6  # not the malformed
        assert m[("rpcworker_inflight", "m")] == 0
        assert len(records(d, method="record")) == 5
    finally:
        d.stop()
        delete_entities((f"q-{uid}",), (f"ex-{uid}",))


def test_readyz_is_503_while_the_broker_link_is_down(
    daemon_factory: Any, tmp_path: Path, uid: str
) -> None:
    port = free_port()
    with TCPProxy(BROKER_HOST, BROKER_PORT).start() as proxy:
        broker = broker_section().replace(f"port = {BROKER_PORT}", f"port = {proxy.port}")
        d = daemon_factory(config(uid, tmp_path, port, broker=broker))
        try:
            wait_ready(port, d)
            proxy.blackhole(new_connections=True)  # reconnection attempts hang
            assert proxy.kill_all() >= 1  # the worker's connection is reset
            code, reason = wait_for(
                lambda: (
                    (r := get(port, "/readyz"))[0] == 503
                    and r[1].startswith("reconnecting to the broker")
                    and r
                ),
                30,
                message=f"/readyz 503 (log: {d.log_tail()})",
            )
            assert reason.count("\n") == 1 and reason.endswith("\n"), reason
            assert get(port, "/healthz")[0] == 200  # the loop is alive, only disconnected
            assert scrape(port)[("rpcworker_connected", "")] == 0
            proxy.restore()
            proxy.kill_all()  # the held attempt fails at once; the next one goes through
            assert "1 reconnect(s)" in wait_ready(port, d)
            m = scrape(port)
            assert m[("rpcworker_reconnects_total", "")] == 1
            assert m[("rpcworker_connected", "")] == 1
            assert m[("rpcworker_binding_consuming", "m")] == 1
        finally:
            d.stop()
            delete_entities((f"q-{uid}",), (f"ex-{uid}",))


def listening_inode(port: int) -> str:
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
                return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def holds_socket(pid: int, inode: str) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


def test_two_workers_one_endpoint_summed(daemon_factory: Any, tmp_path: Path, uid: str) -> None:
    port = free_port()
    # prefetch 1 and a slow handler: the broker hands the casts to both workers
    d = daemon_factory(
        config(
            uid, tmp_path, port, workers=2, binding="prefetch_count = 1\n", recorder="delay = 0.3\n"
        )
    )
    d.records_path = str(tmp_path / "records.jsonl")
    try:
        reason = wait_ready(port, d)
        assert reason.startswith("2/2 workers consuming"), reason
        assert get(port, "/healthz") == (200, "2 worker consume loop(s) alive\n")
        assert d.proc is not None
        pids = children(d.proc.pid)
        assert len(pids) == 2
        inode = listening_inode(port)  # one endpoint: the supervisor's, not the workers'
        assert holds_socket(d.proc.pid, inode)
        assert not any(holds_socket(pid, inode) for pid in pids)
        assert scrape(port)[("rpcworker_binding_consuming", "m")] == 2
        for i in range(8):
            cast(f"ex-{uid}", "k", "record", i=i)
        wait_for(lambda: settled(port) >= 8, 30, message="8 deliveries settled")
        m = scrape(port)
        assert m[("rpcworker_received_total", "m")] == 8
        assert m[("rpcworker_acked_total", "m")] == 8
        assert m[("rpcworker_handler_duration_seconds_count", "m")] == 8
        assert m[("rpcworker_connected", "")] == 1
        handled_by = {r["pid"] for r in records(d, method="record")}
        assert handled_by == set(pids)  # both workers' counts are in the sums
    finally:
        d.stop()
        delete_entities((f"q-{uid}",), (f"ex-{uid}",))
