"""Helpers shared by the functional tests: broker inspection, daemons with the
`recorder` handler, and a pika client."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
from rpcworker_testplugin import read_records

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    broker_section,
    delete_exchanges,
    delete_queues,
    stop_all,
)
from tests.helpers import wait_for

JSON = "application/json"


def rabbitmqctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


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
        ["rabbitmqctl", "list_queues", "-q", "--formatter", "json", "name", "durable",
         "auto_delete", "exclusive", "arguments", "messages_ready",
         "messages_unacknowledged"],
        capture_output=True, text=True, check=True, timeout=30).stdout
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

    def start(self, bindings: dict[str, dict[str, Any]], name: str = "w1",
              default: dict[str, Any] | None = None, recorder_delay: float = 0.0,
              recorder: dict[str, Any] | None = None, extra: str = "") -> Any:
        rec = self.tmp / f"records-{name}.jsonl"
        lines = ["[DEFAULT]", f"bindings = {', '.join(bindings)}", f"host = {name}-{self.uid}",
                 "graceful_shutdown_timeout = 10"]
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
        wait_for(lambda: "Consuming:" in d.log() or not d.alive(), 30,
                 message=f"daemon {name} consuming")
        assert d.alive() and "Consuming:" in d.log(), d.log_tail()
        return d

    def cleanup(self) -> None:
        stop_all(self.daemons)
        delete_queues(*sorted(self.queues))
        delete_exchanges(*sorted(self.exchanges))


def records(d: Any, **match: Any) -> list[dict[str, Any]]:
    """The recorder lines of daemon ``d`` whose fields equal ``match``."""
    return [r for r in read_records(d.records_path)
            if all(r.get(k) == v for k, v in match.items())]


class PikaClient:
    """One pika BlockingConnection with a publisher-confirmed channel."""

    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.ConnectionParameters(
            host=BROKER_HOST, port=BROKER_PORT,
            credentials=pika.PlainCredentials("guest", "guest")))
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()
        self.received: list[tuple[Any, bytes]] = []

    def publish(self, exchange: str, routing_key: str, body: Any, *,
                content_type: str | None = JSON, mandatory: bool = True,
                **properties: Any) -> None:
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
            queue, lambda ch, method, props, body: self.received.append((props, body)),
            auto_ack=True)

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


