"""Plain AMQP RPC, casts and events from a real `pika` client against the real daemon.

Also home of the small helpers shared by test_bindings.py and test_bad_messages.py
(``Workers``, ``PikaClient``, ``queue_info``): plain classes and functions, no fixtures,
so importing them does not re-collect any test.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pika
import pytest
from rpcworker_testplugin import read_records

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    BROKER_URL,
    broker_section,
    delete_queues,
)
from tests.helpers import wait_for

JSON = "application/json"


# -- shared helpers --------------------------------------------------------------------


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


def delete_exchanges(*names: str) -> None:
    with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
        for name in names:
            try:
                conn.channel().exchange_delete(name)
            except Exception:
                pass


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
              default: dict[str, Any] | None = None, recorder_delay: float = 0.0) -> Any:
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
        lines += ["[recorder]", f"path = {rec}", f"delay = {recorder_delay}", ""]
        d = self.factory("\n".join(lines) + "\n", name=name)
        d.records_path = str(rec)
        self.daemons.append(d)
        wait_for(lambda: "Consuming:" in d.log() or not d.alive(), 30,
                 message=f"daemon {name} consuming")
        assert d.alive() and "Consuming:" in d.log(), d.log_tail()
        return d

    def cleanup(self) -> None:
        for d in self.daemons:
            try:
                d.stop(timeout=30)
            except Exception:
                pass
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


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def workers(daemon_factory: Any, tmp_path: Path, uid: str) -> Iterator[Workers]:
    w = Workers(daemon_factory, tmp_path, uid)
    yield w
    w.cleanup()


@pytest.fixture
def amqp() -> Iterator[PikaClient]:
    c = PikaClient()
    yield c
    c.close()


@pytest.fixture
def api(workers: Workers, uid: str) -> Any:
    """A daemon with a direct binding (exchange ex-UID, key rk-UID, queue q-UID)."""
    d = workers.start({"api": {"type": "direct", "handler": "recorder",
                               "exchange": f"ex-{uid}", "queue": f"q-{uid}",
                               "routing_key": f"rk-{uid}"}})
    d.exchange, d.key, d.queue = f"ex-{uid}", f"rk-{uid}", f"q-{uid}"
    return d


# -- tests -------------------------------------------------------------------------------


def test_call_with_reply_to_and_correlation_id(api: Any, amqp: PikaClient) -> None:
    reply_to = amqp.reply_queue()
    corr = uuid.uuid4().hex
    amqp.publish(api.exchange, api.key,
                 {"method": "record", "args": {"x": 1, "s": "é"}, "context": {"user": "u1"}},
                 reply_to=reply_to, correlation_id=corr)
    (props, body), = amqp.wait_replies(1)
    assert props.correlation_id == corr
    assert json.loads(body) == {"result": {"x": 1, "s": "é"}}
    rec, = records(api, method="record")
    assert rec["ctxt"] == {"user": "u1"} and rec["args"] == {"x": 1, "s": "é"}


def test_error_reply(api: Any, amqp: PikaClient) -> None:
    reply_to = amqp.reply_queue()
    corr = uuid.uuid4().hex
    amqp.publish(api.exchange, api.key, {"method": "fail", "args": {"tag": "t1"}},
                 reply_to=reply_to, correlation_id=corr)
    (props, body), = amqp.wait_replies(1)
    assert props.correlation_id == corr
    error = json.loads(body)["error"]
    assert error["type"] == "ValueError" and error["module"] == "builtins"
    assert "recorder was asked to fail" in error["message"] and "t1" in error["message"]
    assert set(json.loads(body)) == {"error"}
    # a call that failed has its answer: acked, not redelivered
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")
    assert len(records(api, method="fail")) == 1


def test_unknown_method_error_reply(api: Any, amqp: PikaClient) -> None:
    reply_to = amqp.reply_queue()
    amqp.publish(api.exchange, api.key, {"method": "nope", "args": {}},
                 reply_to=reply_to, correlation_id="c-1")
    (props, body), = amqp.wait_replies(1)
    assert props.correlation_id == "c-1"
    assert json.loads(body)["error"]["type"] == "NoSuchMethod"


def test_direct_reply_to(api: Any, amqp: PikaClient) -> None:
    amqp.consume("amq.rabbitmq.reply-to")  # auto_ack, before publishing: RabbitMQ requires it
    corrs = [uuid.uuid4().hex for _ in range(3)]
    for i, corr in enumerate(corrs):
        amqp.publish(api.exchange, api.key, {"method": "record", "args": {"i": i}},
                     reply_to="amq.rabbitmq.reply-to", correlation_id=corr)
    got = amqp.wait_replies(3)
    assert {p.correlation_id: json.loads(b) for p, b in got} == {
        corr: {"result": {"i": i}} for i, corr in enumerate(corrs)}


def test_json_method_without_reply_to_is_a_cast(api: Any, amqp: PikaClient) -> None:
    amqp.publish(api.exchange, api.key,
                 {"method": "record", "args": {"cast": True}, "context": {"r": "req-9"}})
    rec, = wait_for(lambda: records(api, method="record"), 10, message="the cast recorded")
    assert rec["args"] == {"cast": True} and rec["ctxt"] == {"r": "req-9"}
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")


def test_json_without_method_is_an_event(api: Any, amqp: PikaClient) -> None:
    body = {"event_type": "compute.instance.create", "payload": {"id": 7}}
    amqp.publish(api.exchange, api.key, body, headers={"h1": "v1"})
    rec, = wait_for(lambda: records(api, kind="event"), 10, message="the event recorded")
    assert rec["body"] == body
    assert rec["routing_key"] == api.key and rec["exchange"] == api.exchange
    assert rec["headers"] == {"h1": "v1"} and rec["redelivered"] is False
    assert records(api, kind="rpc") == []
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")
