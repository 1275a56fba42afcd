"""Helpers shared by the functional tests: broker inspection, daemons with the
`recorder` handler, a pika client, a plain kombu RPC client, the command lines
(`rpcworker`, `rpcworker-client`), the metrics endpoint, /proc and a systemd
notify socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kombu
import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rpcworker_testplugin import read_records

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    BROKER_URL,
    broker_section,
    delete_exchanges,
    delete_queues,
    stop_all,
)
from tests.helpers import http_get, rabbitmqctl_command, wait_for

JSON = "application/json"
RPCWORKER = Path(sys.executable).parent / "rpcworker"
_CLIENT_SCRIPT = Path(sys.executable).with_name("rpcworker-client")
#: the `rpcworker-client` command: the console script, or ``python -m`` without it
CLIENT = (
    [str(_CLIENT_SCRIPT)]
    if _CLIENT_SCRIPT.exists()
    else [sys.executable, "-m", "rpcworker.cmd.client"]
)
WATCHDOG_USEC = 2_000_000  # the daemon sends WATCHDOG=1 about every second


def rabbitmqctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*rabbitmqctl_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_broker() -> None:
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup", timeout=180)


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """RabbitMQ's app stopped for the duration of the block; ALWAYS started again after."""
    try:
        result = rabbitmqctl("stop_app")
        assert result.returncode == 0, result.stderr
        yield
    finally:
        start_broker()


def queue_info(name: str) -> dict[str, Any] | None:
    """The queue as `rabbitmqctl list_queues` sees it (None when it does not exist)."""
    out = subprocess.run(
        [
            *rabbitmqctl_command(),
            "list_queues",
            "-q",
            "--formatter",
            "json",
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "messages_ready",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for q in json.loads(out or "[]"):
        if q["name"] == name:
            return q
    return None


def queue_drained(name: str) -> bool:
    """Nothing ready and nothing unacknowledged on ``name``."""
    q = queue_info(name)
    return q is not None and q["messages_ready"] == 0 and q["messages_unacknowledged"] == 0


class Workers:
    """Start daemons whose bindings use the `recorder` handler; clean up after them.

    ``start({"NAME": {"type": "direct", ...}}, name="w1")`` writes the config (with a
    ``[recorder] path`` of its own), starts the daemon and waits until it consumes.
    ``cleanup()`` stops the daemons, then deletes the queues and exchanges they named.
    """

    def __init__(self, factory: Any, tmp_path: Path, uid: str) -> None:
        self.factory = factory
        self.tmp = tmp_path
        self.uid = uid
        self.daemons: list[Any] = []
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()

    def start(
        self,
        bindings: dict[str, dict[str, Any]],
        name: str = "w1",
        default: dict[str, Any] | None = None,
        recorder_delay: float = 0.0,
        recorder: dict[str, Any] | None = None,
        extra: str = "",
    ) -> Any:
        rec = self.tmp / f"records-{name}.jsonl"
        lines = [
            "[DEFAULT]",
            f"bindings = {', '.join(bindings)}",
            f"host = {name}-{self.uid}",
            "graceful_shutdown_timeout = 10",
        ]
        lines += [f"{k} = {v}" for k, v in (default or {}).items()]
        lines += ["", broker_section()]
        for bname, options in bindings.items():
            lines.append(f"[binding:{bname}]")
            lines += [f"{k} = {v}" for k, v in options.items()]
            lines.append("")
            if options.get("type") != "rpc":
                self.exchanges.add(options.get("exchange", bname))
                if options.get("type") != "fanout" or "queue" in options:
                    self.queues.add(options.get("queue", bname))
        lines += ["[recorder]", f"path = {rec}", f"delay = {recorder_delay}"]
        lines += [f"{k} = {v}" for k, v in (recorder or {}).items()] + ["", extra]
        d = self.factory("\n".join(lines) + "\n", name=name)
        d.records_path = str(rec)
        self.daemons.append(d)
        wait_for(
            lambda: "Consuming:" in d.log() or not d.alive(), 30, message=f"daemon {name} consuming"
        )
        assert d.alive() and "Consuming:" in d.log(), d.log_tail()
        return d

    def cleanup(self) -> None:
        stop_all(self.daemons)
        delete_queues(*sorted(self.queues))
        delete_exchanges(*sorted(self.exchanges))


def records(d: Any, **match: Any) -> list[dict[str, Any]]:
    """The recorder lines of daemon ``d`` whose fields equal ``match``."""
    return [r for r in read_records(d.records_path) if all(r.get(k) == v for k, v in match.items())]


class PikaClient:
    """One pika BlockingConnection with a publisher-confirmed channel."""

    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(
            pika.ConnectionParameters(
                host=BROKER_HOST,
                port=BROKER_PORT,
                credentials=pika.PlainCredentials("guest", "guest"),
            )
        )
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()
        self.received: list[tuple[Any, bytes]] = []

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        *,
        content_type: str | None = JSON,
        mandatory: bool = True,
        **properties: Any,
    ) -> None:
        """Publish (confirmed); raises pika.exceptions.UnroutableError if no queue got it."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
        props = pika.BasicProperties(content_type=content_type, **properties)
        self.channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)

    def reply_queue(self) -> str:
        """An exclusive, server-named queue consumed into ``self.received``."""
        name = self.channel.queue_declare("", exclusive=True).method.queue
        self.consume(name)
        return name

    def consume(self, queue: str) -> None:
        self.channel.basic_consume(
            queue,
            lambda ch, method, props, body: self.received.append((props, body)),
            auto_ack=True,
        )

    def wait_replies(self, n: int = 1, timeout: float = 10) -> list[tuple[Any, bytes]]:
        def enough() -> bool:
            self.conn.process_data_events(time_limit=0.05)
            return len(self.received) >= n

        wait_for(enough, timeout, message=f"{n} reply(ies)")
        return self.received

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


# -- kombu: plain AMQP messages and RPC ---------------------------------------------------


def publish(exchange: str, routing_key: str, body: Any, **properties: Any) -> None:
    """Publish one persistent JSON message (kombu, its own connection)."""
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        producer = kombu.Producer(conn.channel(), auto_declare=False)
        producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            serializer="json",
            delivery_mode=2,
            retry=False,
            **properties,
        )


def cast(exchange: str, routing_key: str, method: str, **args: Any) -> None:
    """A plain AMQP RPC cast: ``{"method": M, "args": {...}}`` without reply_to."""
    publish(exchange, routing_key, {"method": method, "args": args, "context": {}})


def delete_entities(queues: tuple[str, ...] = (), exchanges: tuple[str, ...] = ()) -> None:
    """Delete queues, then exchanges, ignoring those that do not exist."""
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        for name in queues:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)
        for name in exchanges:
            with contextlib.suppress(Exception):
                conn.channel().exchange_delete(name)


class PlainRPC:
    """A plain AMQP RPC client (reply_to + correlation_id) on its own reply queue."""

    def __init__(self) -> None:
        self.conn = kombu.Connection(BROKER_URL, connect_timeout=5)
        self.conn.ensure_connection(max_retries=3)
        channel = self.conn.channel()
        self.reply_queue = kombu.Queue(
            f"reply-{uuid.uuid4().hex}", exclusive=True, auto_delete=True, durable=False
        )(channel)
        self.reply_queue.declare()
        self.producer = kombu.Producer(channel, auto_declare=False)
        self.replies: dict[str, Any] = {}

    def send(self, exchange: str, routing_key: str, method: str, **args: Any) -> str:
        corr = uuid.uuid4().hex
        self.producer.publish(
            {"method": method, "args": args, "context": {"user": "t"}},
            exchange=exchange,
            routing_key=routing_key,
            serializer="json",
            reply_to=self.reply_queue.name,
            correlation_id=corr,
            retry=False,
        )
        return corr

    def _poll(self, corr: str) -> bool:
        msg = self.reply_queue.get(no_ack=True, accept=["json"])
        if msg is not None:
            self.replies[msg.properties.get("correlation_id")] = msg.decode()
        return corr in self.replies

    def wait(self, corr: str, timeout: float = 20) -> Any:
        wait_for(lambda: self._poll(corr), timeout, message=f"the reply to {corr}")
        return self.replies.pop(corr)

    def call(
        self, exchange: str, routing_key: str, method: str, timeout: float = 20, **args: Any
    ) -> Any:
        return self.wait(self.send(exchange, routing_key, method, **args), timeout)

    def close(self) -> None:
        self.conn.release()


@contextlib.contextmanager
def plain_rpc() -> Iterator[PlainRPC]:
    """A PlainRPC, closed after the block."""
    client = PlainRPC()
    try:
        yield client
    finally:
        client.close()


def tags(path: Path, kind: str = "rpc") -> list[Any]:
    """The ``tag`` argument of each ``kind`` record in the recorder file ``path``, in order."""
    return [r.get("args", {}).get("tag") for r in read_records(str(path)) if r["kind"] == kind]


def direct(uid: str, **options: Any) -> dict[str, Any]:
    """A direct binding on the recorder (exchange ex-UID, queue q-UID, key rk-UID)."""
    return {
        "type": "direct",
        "handler": "recorder",
        "exchange": f"ex-{uid}",
        "queue": f"q-{uid}",
        "routing_key": f"rk-{uid}",
        **options,
    }


def parked(queue: str) -> list[tuple[dict[str, Any], Any]]:
    """(headers, body) of every message in the parking lot ``queue`` (consumed)."""
    out = []
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        q = kombu.Queue(queue, no_declare=True)(conn.channel())
        while (m := q.get(no_ack=True)) is not None:
            out.append((dict(m.headers or {}), json.loads(m.body)))
    return out


# -- the command lines --------------------------------------------------------------------


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `rpcworker ARGS` (the console script, or ``python -m rpcworker``) to its end."""
    exe = [str(RPCWORKER)] if RPCWORKER.exists() else [sys.executable, "-m", "rpcworker"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], expected: tuple[str, ...]
) -> None:
    """Exit 2, no traceback, and one line on stderr that contains each of ``expected``."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


def connections_to(sock: socket.socket) -> int:
    """Connections waiting in ``sock``'s accept queue (a process that exited left them)."""
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def daemon_config(uid: str, tmp_path: Path, broker: str, default: str = "") -> str:
    """One direct binding on the recorder; ``default``: extra [DEFAULT] lines."""
    return (
        textwrap.dedent(f"""\
        [DEFAULT]
        bindings = work
        host = h-{uid}
        graceful_shutdown_timeout = 10
        """)
        + default
        + "\n"
        + broker
        + textwrap.dedent(f"""
        [recorder]
        path = {tmp_path / "records.jsonl"}

        [binding:work]
        type = direct
        handler = recorder
        exchange = ex-{uid}
        queue = q-{uid}
        routing_key = k-{uid}
        """)
    )


def run_client(
    conf: Path | str, *args: str, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `rpcworker-client --config-file CONF ARGS` to its end."""
    return subprocess.run(
        [*CLIENT, "--config-file", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


# -- the metrics endpoint and /proc -------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(sample name, binding label): value} from /metrics."""
    code, text = http_get(port, "/metrics")
    assert code == 200, text
    return {
        (s.name, s.labels.get("binding", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


# -- systemd notify -----------------------------------------------------------------------


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

    def expect(
        self,
        match: Callable[[str], bool] | str,
        timeout: float,
        on_match: Callable[[str], None] | None = None,
    ) -> str:
        """The next datagram that ``match``es (a predicate, or a line it must contain)."""
        pred = match if callable(match) else (lambda m: match in m.split("\n"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._recv(deadline)
            if text is not None and pred(text):
                if on_match is not None:
                    on_match(text)
                return text
        raise AssertionError(
            f"timed out after {timeout}s waiting for {match!r}; "
            f"received: {[m for _, m in self.received][-10:]}"
        )

    def watchdogs_since(self, start: float) -> list[float]:
        return [t for t, m in self.received if t >= start and m == "WATCHDOG=1"]

    def close(self) -> None:
        self.sock.close()


L = TypeVar("L", bound=Listener)


def notify_listener(
    cls: type[L],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watchdog_usec: int = WATCHDOG_USEC,
) -> L:
    """A ``cls`` bound in tmp_path, and NOTIFY_SOCKET/WATCHDOG_USEC set for daemons started
    from now on (conftest's Daemon.start passes os.environ)."""
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes"
    lst = cls(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(watchdog_usec))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return lst
