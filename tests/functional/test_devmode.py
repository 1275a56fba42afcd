"""Development without RabbitMQ: ``transport_url = filesystem:///PATH`` runs the worker
and rpcworker-client on one machine through kombu's filesystem transport.

The [broker] section points at a listening socket that nothing may connect to: with a
filesystem:// URL no broker is ever contacted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.functional.support import assert_one_line_error, connections_to, run
from tests.helpers import wait_for
from tests.plugin.rpcworker_testplugin import read_records

CLIENT = Path(sys.executable).parent / "rpcworker-client"


def dev_config(folder: Path, records: Path, trap_port: int, host: str) -> str:
    return textwrap.dedent(f"""\
        [DEFAULT]
        bindings = api, events, bcast, jobs
        transport_url = filesystem://{folder}
        host = {host}
        graceful_shutdown_timeout = 10

        [broker]
        hostname = 127.0.0.1
        port = {trap_port}

        [recorder]
        path = {records}

        [binding:api]
        type = rpc
        handler = recorder
        topic = inventory

        [binding:events]
        type = topic
        handler = recorder
        exchange = events
        queue = events-q
        routing_key = instance.*

        [binding:bcast]
        type = fanout
        handler = recorder
        exchange = broadcast

        [binding:jobs]
        type = direct
        handler = recorder
        exchange = work
        queue = jobs-q
        routing_key = jobs
        max_retries = 3
        dead_letter_queue = jobs-parked
        """)


def client(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLIENT), "--config-file", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def messages_in(folder: Path, queue: str) -> int:
    return sum(
        1 for name in os.listdir(folder / "queues") if name.partition(".")[2] == f"{queue}.msg"
    )


def test_worker_and_client_without_a_broker(
    daemon_factory: Any, tmp_path: Path, trap: socket.socket
) -> None:
    folder = tmp_path / "bus"
    rec1, rec2 = tmp_path / "w1.jsonl", tmp_path / "w2.jsonl"
    w1 = daemon_factory(dev_config(folder, rec1, trap.getsockname()[1], "dev1"), "w1")
    w2 = daemon_factory(dev_config(folder, rec2, trap.getsockname()[1], "dev2"), "w2")
    for d in (w1, w2):
        d.wait_log("Consuming:")
    conf = w1.config_path

    def all_records() -> list[dict[str, Any]]:
        return read_records(str(rec1)) + read_records(str(rec2))

    # calls: to the topic (either worker) and to one server
    result = client(conf, "call", "inventory", "record", "--arg", "n=1")
    assert result.returncode == 0, result.stderr
    assert '"n": 1' in result.stdout
    result = client(conf, "call", "inventory", "record", "--server", "dev2", "--arg", "n=2")
    assert result.returncode == 0, result.stderr
    assert [
        r["args"]
        for r in read_records(str(rec2))
        if r.get("method") == "record" and r["args"].get("n") == 2
    ] == [{"n": 2}]

    # a cast, an RPC fanout (every server), a topic event, a fanout event, a direct job
    assert client(conf, "cast", "inventory", "record", "--arg", "n=3").returncode == 0
    assert client(conf, "fanout", "inventory", "record", "--arg", "n=4").returncode == 0
    assert (
        client(
            conf,
            "publish",
            "--exchange",
            "events",
            "--type",
            "topic",
            "--routing-key",
            "instance.create",
            '{"e": 5}',
        ).returncode
        == 0
    )
    assert (
        client(
            conf, "publish", "--exchange", "broadcast", "--type", "fanout", '{"e": 6}'
        ).returncode
        == 0
    )
    assert (
        client(
            conf,
            "publish",
            "--exchange",
            "work",
            "--routing-key",
            "jobs",
            '{"method": "record", "args": {"n": 7}}',
        ).returncode
        == 0
    )

    def seen(key: str, value: int) -> list[int]:
        return [
            r["pid"]
            for r in all_records()
            if (r.get("args") or r.get("body") or {}).get(key) == value
        ]

    wait_for(
        lambda: (
            len(seen("n", 3)) == 1
            and len(seen("n", 4)) == 2
            and len(seen("e", 5)) == 1
            and len(seen("e", 6)) == 2
            and len(seen("n", 7)) == 1
        ),
        20,
        message=f"every message handled (records: {all_records()})",
    )
    # fanout reached both workers; the shared queues gave each message to one of them
    assert len(set(seen("n", 4))) == 2 and len(set(seen("e", 6))) == 2
    assert all(len(seen("n", i)) == 1 for i in (1, 2, 3, 7))

    # no message TTL on this transport: a failing job is parked at once, not retried
    assert (
        client(
            conf,
            "publish",
            "--exchange",
            "work",
            "--routing-key",
            "jobs",
            '{"method": "fail", "args": {}}',
        ).returncode
        == 0
    )
    wait_for(
        lambda: messages_in(folder, "jobs-parked") == 1,
        20,
        message="the failed job in the parking lot",
    )
    assert messages_in(folder, "jobs-q") == 0

    for d in (w1, w2):
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=30) == 0
    logs = w1.log() + w2.log()
    assert "cast 'fail'" in logs and "queue jobs-q has no delay queue" in logs
    assert logs.count("Traceback") == 1, "only the failing job's traceback is logged"
    assert connections_to(trap) == 0, "filesystem:// must never contact the broker"


def test_bad_filesystem_url_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(
        "[DEFAULT]\nbindings = b\ntransport_url = filesystem://relative/dir\n"
        "[binding:b]\ntype = direct\nhandler = echo\nrouting_key = k\n"
    )
    assert_one_line_error(
        run("--config-file", str(path), "--check-config"),
        ("[DEFAULT]", "transport_url", "filesystem:///"),
    )


def test_check_broker_refuses_a_filesystem_url(tmp_path: Path) -> None:
    path = tmp_path / "dev.conf"
    path.write_text(dev_config(tmp_path / "bus", tmp_path / "r.jsonl", 1, "dev"))
    result = run("--config-file", str(path), "--check-config", "--broker")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no broker to check with a filesystem://" in result.stderr
    assert "configuration OK" in result.stdout  # the checks that apply did run
