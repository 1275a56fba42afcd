"""rpcworker on a strict RabbitMQ 4 node (transient non-exclusive queues denied):

- a binding that would declare such a queue makes the daemon exit 2 at once, with one
  line naming the binding, the queue, the refused feature and the option (not a loop of
  reconnects), in one process and with ``workers = 2``;
- ``--check-config --broker`` names the broker's version and flags those queues;
- the shipped configuration serves there: ``make run``'s daemon, the README's three
  client commands, a notification and the parked tools of rpcworker-client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.rabbit4node import Rabbit4Node

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "etc" / "rpcworker" / "rpcworker.conf"
CLIENT = [sys.executable, "-m", "rpcworker.cmd.client"]


def config(node: Rabbit4Node, body: str, tmp_path: Path, name: str = "w.conf") -> Path:
    path = tmp_path / name
    path.write_text(
        f"[broker]\nhostname = 127.0.0.1\nport = {node.port}\n"
        "reconnect_interval_start = 0.5\nreconnect_interval_max = 2\n\n" + body
    )
    return path


class Worker:
    """`rpcworker --config-file PATH` as a subprocess, its output in a file."""

    def __init__(self, conf: Path) -> None:
        self.log_path = conf.with_suffix(".log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rpcworker", "--config-file", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    yield workers
    for w in workers:
        w.stop()


def client(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENT, "--config-file", str(conf), *args], capture_output=True, text=True, timeout=90
    )


CLASSIC_RPC = """
[DEFAULT]
bindings = compute
workers = {workers}
[binding:compute]
type = rpc
handler = echo
topic = strict-{uid}
exchange = strict-{uid}
"""

REFUSAL = re.compile(
    r"\[oslo_messaging_rabbit\] (?P<option>rabbit_\w+): binding compute: the broker refused "
    r"queue '(?P<queue>[^']+)': it denies the deprecated feature transient_nonexcl_queues"
)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_refused_deprecated_feature_exits_2_naming_binding_queue_and_option(
    strict_broker: Rabbit4Node, tmp_path: Path, uid: str, started: list[Worker], workers: int
) -> None:
    conf = config(strict_broker, CLASSIC_RPC.format(uid=uid, workers=workers), tmp_path)
    w = Worker(conf)
    started.append(w)
    began = time.monotonic()
    status = w.proc.wait(timeout=90)
    took = time.monotonic() - began
    log = w.log()
    assert status == 2, log[-3000:]
    match = REFUSAL.search(log)
    assert match, log[-3000:]
    # the first queue declared is a work queue's delay queue or the work queue itself
    assert match["option"] == "rabbit_quorum_queue", match.group(0)
    assert match["queue"].startswith(f"strict-{uid}"), match.group(0)
    assert "set rabbit_quorum_queue = true" in log
    assert log.count("reconnecting") <= 1, "it must not loop on the refusal"
    print(f"\nworkers={workers}: exit 2 after {took:.1f} s: {match.group(0)}")


def test_the_fanout_queue_is_named_with_its_own_option(
    strict_broker: Rabbit4Node, tmp_path: Path, uid: str, started: list[Worker]
) -> None:
    body = CLASSIC_RPC.format(uid=uid, workers=1) + (
        "[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\n"
    )
    w = Worker(config(strict_broker, body, tmp_path))
    started.append(w)
    assert w.proc.wait(timeout=90) == 2, w.log()[-3000:]
    match = REFUSAL.search(w.log())
    assert match and match["option"] == "rabbit_transient_quorum_queue", w.log()[-3000:]
    assert match["queue"].startswith(f"strict-{uid}_fanout_")
    for q in (f"strict-{uid}", f"strict-{uid}.{os.uname().nodename}"):
        strict_broker.ctl("delete_queue", q)


def test_check_config_broker_names_the_version_and_the_deprecated_queues(
    strict_broker: Rabbit4Node, tmp_path: Path, uid: str
) -> None:
    conf = config(strict_broker, CLASSIC_RPC.format(uid=uid, workers=1), tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpcworker",
            "--config-file",
            str(conf),
            "--check-config",
            "--broker",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert f"broker: RabbitMQ {strict_broker.version}" in out.stdout, out.stdout
    assert "DEPRECATED binding compute:" in out.stdout
    assert "avoided by [oslo_messaging_rabbit] rabbit_transient_quorum_queue = true" in out.stdout
    assert "avoided by [oslo_messaging_rabbit] rabbit_quorum_queue = true" in out.stdout
    shipped = config(strict_broker, _shipped_body(), tmp_path, "shipped.conf")
    out = check_broker(shipped)
    assert out.returncode == 0 and "DEPRECATED" not in out.stdout, out.stdout + out.stderr


def check_broker(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpcworker", "--config-file", str(conf)]
        + ["--check-config", "--broker"],
        capture_output=True,
        text=True,
        timeout=90,
    )


def _shipped_body() -> str:
    """The shipped configuration with its [broker] section left out (config() writes one
    for the strict node)."""
    text = SHIPPED.read_text()
    start = text.index("[broker]")
    end = text.index("\n[", start + 1)
    return text[:start] + text[end + 1 :]


def test_the_shipped_configuration_serves_on_a_strict_broker(
    strict_broker: Rabbit4Node, tmp_path: Path, started: list[Worker]
) -> None:
    conf = config(strict_broker, _shipped_body(), tmp_path, "shipped.conf")
    w = Worker(conf)
    started.append(w)
    wait_for(
        lambda: "Consuming:" in w.log() or w.proc.poll() is not None,
        60,
        message="the shipped configuration consuming",
    )
    assert w.proc.poll() is None, w.log()[-3000:]
    wait_for(lambda: "rpcworker, events, broadcast" in w.log(), 10, message="all bindings")
    # the README's three client commands
    call = client(conf, "call", "rpcworker", "echo", "--arg", "x=1")
    assert (call.returncode, json.loads(call.stdout)) == (0, {"x": 1}), call.stderr
    cast = client(conf, "cast", "rpcworker", "echo", "--arg", "x=2")
    assert cast.returncode == 0, cast.stderr
    fail = client(conf, "call", "rpcworker", "fail", "--arg", "message=boom")
    assert fail.returncode == 1 and "ValueError: boom" in fail.stderr, fail.stderr
    # a fanout to the rpc topic, a notification (its queue declared as oslo's notifier)
    fanout = client(conf, "fanout", "rpcworker", "echo", "--arg", "x=3")
    assert fanout.returncode == 0, fanout.stderr
    notify = client(conf, "notify", "compute.instance.create.end", "--arg", "id=1")
    assert notify.returncode == 0, notify.stderr
    queues = strict_broker.ctl("list_queues", "-q", "--formatter", "json", "name", "type")
    kinds = {q["name"]: q["type"] for q in json.loads(queues.stdout)}
    assert kinds["notifications.info"] == "quorum", kinds
    assert kinds["rpcworker"] == "quorum", kinds
    assert w.proc.poll() is None, w.log()[-3000:]
    # the parked tools read a lot with passive declares only
    parked = client(conf, "parked", "list", "--queue", "rpcworker-events")
    assert parked.returncode == 0, parked.stdout + parked.stderr
    assert w.stop() == 0, w.log()[-3000:]
