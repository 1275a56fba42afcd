"""The fakes and fixtures' values the test modules share (no test module imports
another): bindings, handlers and requests for the policy and the dispatcher, the recorder
of notifier calls and a clock, the message and Settle of the settle tests, and the
management API recordings of the broker check."""

from __future__ import annotations

import base64
import dataclasses
import json
import select
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import kombu

import rpcworker
from rpcworker.amqp.transport import Capabilities
from rpcworker.config.bindingconf import Binding
from rpcworker.engine.events import NULL, Listener, Stats
from rpcworker.engine.executor import Executor
from rpcworker.engine.inflight import Inflight
from rpcworker.engine.settle import Settle
from rpcworker.engine.telling import Teller
from rpcworker.policy import outcomes
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.outcomes import Delivery, Outcome
from rpcworker.wire import decoding

# -- the policy and the dispatcher ---------------------------------------------------------

AFTER = Binding(
    name="b",
    type="rpc",
    handler="h",
    exchange="openstack",
    durable=False,
    prefetch_count=1,
    acknowledge="after",
    topic="t",
    server="s",
)
BEFORE = Binding(
    name="b",
    type="rpc",
    handler="h",
    exchange="openstack",
    durable=False,
    prefetch_count=1,
    acknowledge="before",
    topic="t",
    server="s",
)
ROUTE = decoding.ReplyRoute("amqp", "rq", correlation_id="c")


class Target:
    namespace = "ns"
    version = "1.3"
    legacy_namespaces = ["old"]


class Handler:
    def __init__(self) -> None:
        self.events: list[rpcworker.Message] = []

    def add(self, ctxt: dict[str, Any], a: int, b: int) -> int:
        return a + b

    def boom(self, ctxt: dict[str, Any]) -> None:
        raise KeyError("boom")

    def reject(self, ctxt: dict[str, Any]) -> None:
        raise rpcworker.Reject("no")

    def requeue(self, ctxt: dict[str, Any]) -> None:
        raise rpcworker.Requeue("later")

    def unjson(self, ctxt: dict[str, Any]) -> object:
        return object()

    def _secret(self, ctxt: dict[str, Any]) -> str:
        return "leaked"

    attribute = "not callable"

    def handle_message(self, message: rpcworker.Message) -> None:
        self.events.append(message)


class Versioned(Handler):
    target = Target()


def req(
    method: str | None, call: bool = True, redelivered: bool = False, **kw: Any
) -> decoding.Request:
    return decoding.Request(
        body={}, method=method, reply=ROUTE if call else None, redelivered=redelivered, **kw
    )


def error_type(outcome: outcomes.Outcome) -> str:
    assert outcome.reply is not None
    return str(json.loads(outcome.reply.body)["error"]["type"])


RETRYING = dataclasses.replace(AFTER, max_retries=2)


# -- the supervisor's notifications ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sink:
    """Records the Notifier calls the hub makes, as systemd datagram lines."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str) -> None:
        self.sent.append(f"READY=1 STATUS={status}")

    def status(self, status: str) -> None:
        self.sent.append(f"STATUS={status}")

    def watchdog(self) -> None:
        self.sent.append("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.sent.append(f"STOPPING=1 STATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        self.sent.append(f"EXTEND_TIMEOUT={seconds:g}")

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")

    def count(self, prefix: str) -> int:
        return sum(1 for m in self.sent if m.startswith(prefix))

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


# -- settle -----------------------------------------------------------------------------------

BINDING = Binding(
    name="b",
    type="direct",
    handler="h",
    exchange="ex",
    durable=True,
    prefetch_count=1,
    acknowledge="after",
    queue="q",
    routing_keys=("k",),
    max_retries=2,
    dead_letter_queue="parked",
)


@dataclasses.dataclass
class FakeMessage:
    body: bytes = b'{"method": "m"}'
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    delivery_info: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"exchange": "ex", "routing_key": "k"}
    )
    settled: list[str] = dataclasses.field(default_factory=list)

    def ack(self) -> None:
        self.settled.append("ack")

    def reject(self, requeue: bool) -> None:
        self.settled.append("requeue" if requeue else "reject")


class Box(Settle):
    """A Settle that counts what it settled in ``stats``."""

    def __init__(self, conn: kombu.Connection, listener: Listener | None = None) -> None:
        self.stats = Stats()
        super().__init__(conn, Capabilities.of(conn), listener or self.stats, Teller())


# -- the RabbitMQ management API (broker check) -------------------------------------------------

# as GET /api/queues/%2F/orders returns it on RabbitMQ 3.10 (trimmed)
CLASSIC_QUEUE = {
    "arguments": {},
    "auto_delete": False,
    "durable": True,
    "exclusive": False,
    "messages": 7,
    "messages_ready": 7,
    "messages_unacknowledged": 0,
    "consumers": 0,
    "name": "orders",
    "node": "rabbit@host",
    "state": "running",
    "type": "classic",
    "vhost": "/",
}
QUORUM_QUEUE = {
    "arguments": {"x-queue-type": "quorum", "x-max-length": 1000},
    "auto_delete": False,
    "durable": True,
    "exclusive": False,
    "messages": 0,
    "name": "jobs",
    "type": "quorum",
    "vhost": "/",
    "leader": "rabbit@host",
    "members": ["rabbit@host"],
}
TOPIC_EXCHANGE = {
    "arguments": {},
    "auto_delete": False,
    "durable": True,
    "internal": False,
    "name": "orders",
    "type": "topic",
    "user_who_performed_action": "guest",
    "vhost": "/",
}
OVERVIEW = {
    "management_version": "3.10.8",
    "rabbitmq_version": "3.10.8",
    "cluster_name": "rabbit@host",
}

RECORDED = {
    "/api/overview": OVERVIEW,
    "/api/queues/%2F/orders": CLASSIC_QUEUE,
    "/api/queues/%2F/jobs": QUORUM_QUEUE,
    "/api/exchanges/%2F/orders": TOPIC_EXCHANGE,
    "/api/queues/my%2Fvhost/a%20b": dict(CLASSIC_QUEUE, name="a b", vhost="my/vhost"),
}
GUEST = "Basic " + base64.b64encode(b"guest:guest").decode()


class ManagementStub(BaseHTTPRequestHandler):
    """Serves RECORDED to a client that logs in as guest."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        if self.headers.get("Authorization") != GUEST:
            self._send(401, {"error": "not_authorised", "reason": "Login failed"})
        elif self.path in RECORDED:
            self._send(200, RECORDED[self.path])
        else:
            self._send(404, {"error": "Object Not Found", "reason": "Not Found"})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


# -- handler threads: inflight without a broker -----------------------------------------


class FakeSettle:
    blocked = False
    pending = 0

    def __init__(self) -> None:
        self.settled: list[tuple[Delivery, Outcome]] = []

    def settle(self, d: Delivery, outcome: Outcome) -> None:
        self.settled.append((d, outcome))

    def reply(self, reply: Any) -> None:
        pass


class Gated:
    """``wait`` blocks until its gate is set; ``add`` returns at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started: list[int] = []
        self.lock = threading.Lock()

    def wait(self, ctxt: dict[str, Any], i: int) -> int:
        with self.lock:
            self.started.append(i)
        self.gate.wait(30)
        return i

    def add(self, ctxt: dict[str, Any], a: int, b: int) -> int:
        return a + b


def settle_until(inflight: Inflight, settle: FakeSettle, n: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(settle.settled) < n and time.monotonic() < deadline:
        select.select([inflight.executor.fileno()], [], [], 0.05)
        inflight.finish(settle)  # type: ignore[arg-type]
        inflight.expire(time.monotonic(), settle)  # type: ignore[arg-type]
    assert len(settle.settled) >= n, settle.settled


def inflight_of(threads: int) -> Inflight:
    inflight = Inflight(Executor(threads), CompletedCache(0), NULL, threads, Teller())
    inflight.connected()
    return inflight
