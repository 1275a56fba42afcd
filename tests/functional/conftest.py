"""Functional fixtures: the real daemon as a subprocess against the real RabbitMQ.

With no broker on 127.0.0.1:5672 these tests fail under CI (CI=true) and skip
elsewhere, with one line saying how to start RabbitMQ.

RPCWORKER_TEST_BROKER_PORT, RPCWORKER_TEST_RABBITMQCTL and RPCWORKER_TEST_BROKER_SERIES
point them at another broker: tests/suites.py's "functional-4.x" pass runs them against the
RabbitMQ 4.x node of tests/rabbit4node.py (5673) with that node's rabbitmqctl.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest

from tests.helpers import rabbitmqctl_command, wait_for

BROKER_HOST = os.environ.get("RPCWORKER_TEST_BROKER_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("RPCWORKER_TEST_BROKER_PORT", "5672"))
BROKER_URL = f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}//"
#: the tests run against the host's own RabbitMQ (3.10, port 5672), not the 4.x node of
#: tests/rabbit4node.py (RPCWORKER_TEST_BROKER_SERIES=4, port 5673)
ON_HOST_BROKER = BROKER_PORT == 5672 and os.environ.get(
    "RPCWORKER_TEST_BROKER_SERIES", "3"
).startswith("3")
HOST_INSTALL_ONLY = (
    "starts its own 3.10 node from the host's install; runs in the 3.10 pass, "
    "not against the RabbitMQ 4.x node"
)
START_HINT = (
    "RabbitMQ is not answering on %s:%d: start it with `rabbitmq-server -detached` "
    "(or `rabbitmqctl start_app`), then `rabbitmqctl await_startup`"
)
START_HINT_4X = (
    "RabbitMQ is not answering on %s:%d: start the 4.x node with "
    '`eval "$(.venv/bin/python -m tests.rabbit4node start --port %d)"`'
)


def broker_up() -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=2):
            pass
    except OSError:
        return False
    try:
        with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session", autouse=True)
def _require_broker() -> None:
    if broker_up():
        return
    if ON_HOST_BROKER:
        line = START_HINT % (BROKER_HOST, BROKER_PORT)
    else:
        line = START_HINT_4X % (BROKER_HOST, BROKER_PORT, BROKER_PORT)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(line, pytrace=False)
    print(f"\n*** SKIPPING functional tests: {line} ***", file=sys.stderr)
    pytest.skip(line)


_RETRY_QUEUE = re.compile(r"\.retry\.\d+(\.quorum)?$")


@pytest.fixture(scope="session", autouse=True)
def _delete_delay_queues(_require_broker: None) -> Iterator[None]:
    """The daemons declare delay queues (<queue>.retry.<ms>) for the tests' bindings:
    delete the unused ones at the end, so test runs do not pile them up on the broker."""
    yield
    try:
        out = subprocess.run(
            [
                *rabbitmqctl_command(),
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "consumers",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    names = [
        parts[0]
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 2 and parts[1] == "0" and _RETRY_QUEUE.search(parts[0])
    ]
    delete_queues(*names)


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket standing in for the broker: nothing may connect to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


@pytest.fixture
def uid() -> str:
    """A short unique suffix for queue/exchange/topic names of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def connection() -> Iterator[kombu.Connection]:
    conn = kombu.Connection(BROKER_URL, connect_timeout=5)
    conn.ensure_connection(max_retries=3)
    try:
        yield conn
    finally:
        conn.release()


def consumer_count(queue: str) -> int:
    """Consumers on ``queue`` (0 when it does not exist)."""
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            _, _, consumers = channel.queue_declare(queue=queue, passive=True)
            return int(consumers)
        except Exception:
            return 0


def message_count(queue: str) -> int:
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        _, messages, _ = channel.queue_declare(queue=queue, passive=True)
        return int(messages)


def delete_queues(*names: str) -> None:
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        for name in names:
            try:
                conn.channel().queue_delete(name)
            except Exception:
                pass


def delete_exchanges(*names: str) -> None:
    """Delete exchanges, ignoring those that do not exist."""
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        for name in names:
            try:
                conn.channel().exchange_delete(name)
            except Exception:
                pass


class Daemon:
    """One `rpcworker` process on a config file written for the test."""

    def __init__(self, tmp: Path, config: str, name: str = "rpcworker") -> None:
        self.dir = tmp
        self.config_path = tmp / f"{name}.conf"
        self.config_path.write_text(textwrap.dedent(config))
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> Daemon:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rpcworker", "--config-file", str(self.config_path), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        return self

    def wait_consuming(self, *queues: str, timeout: float = 30) -> None:
        for q in queues:
            wait_for(
                lambda q=q: self.alive() and consumer_count(q) > 0,
                timeout,
                message=f"a consumer on queue {q!r} (log: {self.log_tail()})",
            )

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(
            lambda: text in self.log(),
            timeout,
            message=f"{text!r} in the worker log (tail: {self.log_tail()})",
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def stop_all(daemons: list[Daemon], timeout: float = 30) -> None:
    """Stop every daemon that still runs (SIGTERM, then SIGKILL after ``timeout``)."""
    for d in daemons:
        if d.alive():
            try:
                d.stop(timeout=timeout)
            except Exception:
                pass


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """daemon_factory(config_text, name=...) -> a started Daemon; stopped at teardown."""
    started: list[Daemon] = []

    def make(config: str, name: str = "rpcworker", start: bool = True, *extra: str) -> Daemon:
        d = Daemon(tmp_path, config, name)
        if start:
            d.start(*extra)
        started.append(d)
        return d

    yield make
    stop_all(started)


def broker_section() -> str:
    return textwrap.dedent(f"""\
        [broker]
        hostname = {BROKER_HOST}
        port = {BROKER_PORT}
        userid = guest
        password = guest
        heartbeat = 10
        reconnect_interval_start = 0.5
        reconnect_interval_step = 0.5
        reconnect_interval_max = 2
        """)


@pytest.fixture
def workers(daemon_factory: Any, tmp_path: Path, uid: str) -> Iterator[Any]:
    """Daemons on the `recorder` handler (tests.functional.support.Workers), cleaned up."""
    from tests.functional.support import Workers

    w = Workers(daemon_factory, tmp_path, uid)
    yield w
    w.cleanup()


@pytest.fixture
def amqp() -> Iterator[Any]:
    """A pika client (tests.functional.support.PikaClient)."""
    from tests.functional.support import PikaClient

    c = PikaClient()
    yield c
    c.close()
