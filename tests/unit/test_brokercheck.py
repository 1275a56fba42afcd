"""rpcworker.amqp.brokercheck without a broker: the management API client (a real HTTP client
against a local stub serving recorded RabbitMQ 3.10 JSON), the comparison, the parsing
of 406 replies, the migration advice and the list of expected entities."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from rpcworker.amqp import brokercheck
from rpcworker.amqp.brokercheck import Difference, Expected, Management
from rpcworker.config.bindingconf import Binding
from tests.fakes import CLASSIC_QUEUE, QUORUM_QUEUE, TOPIC_EXCHANGE, ManagementStub


@pytest.fixture
def stub() -> Iterator[str]:
    """The base URL of a local stub of the management API."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ManagementStub)
    ManagementStub.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def queue(name: str, **kw: Any) -> Expected:
    kw.setdefault("durable", True)
    kw.setdefault("auto_delete", False)
    return Expected(kind="queue", name=name, bindings=("b1",), **kw)


def test_management_reads_recorded_entities(stub: str) -> None:
    api = Management(stub + "/", "guest", "guest")
    assert api.probe() is None
    assert api.queue("/", "orders") == CLASSIC_QUEUE
    assert api.exchange("/", "orders") == TOPIC_EXCHANGE
    assert api.queue("/", "missing") is None  # 404: does not exist
    assert api.queue("my/vhost", "a b") is not None  # vhost and name are quoted
    assert "/api/queues/my%2Fvhost/a%20b" in ManagementStub.requests


def test_management_not_reachable_or_refused(stub: str) -> None:
    assert Management(stub, "guest", "wrong").probe() == "HTTP 401 Unauthorized"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    why = Management(f"http://127.0.0.1:{port}", "guest", "guest", timeout=2).probe()
    assert why is not None and "refused" in why.lower()


def test_compare_classic_queue_configured_quorum(stub: str) -> None:
    actual = Management(stub, "guest", "guest").queue("/", "orders")
    assert actual is not None
    e = queue("orders", arguments={"x-queue-type": "quorum", "x-max-length": 10})
    assert brokercheck.compare(e, actual) == [
        Difference("x-queue-type", "quorum", "classic"),
        Difference("x-max-length", 10, None),
    ]
    assert brokercheck.compare(queue("orders"), actual) == []
    assert brokercheck.compare(queue("orders", durable=False), actual) == [
        Difference("durable", False, True)
    ]


def test_compare_quorum_queue_and_exchange(stub: str) -> None:
    api = Management(stub, "guest", "guest")
    jobs = api.queue("/", "jobs")
    assert jobs is not None
    assert brokercheck.compare(queue("jobs", arguments={"x-queue-type": "quorum"}), jobs) == [
        Difference("x-max-length", None, 1000)
    ]
    assert brokercheck.compare(queue("jobs"), jobs) == [
        Difference("x-queue-type", "classic", "quorum"),
        Difference("x-max-length", None, 1000),
    ]
    ex = api.exchange("/", "orders")
    assert ex is not None
    e = Expected(
        kind="exchange",
        name="orders",
        bindings=("b1",),
        type="direct",
        durable=False,
        auto_delete=False,
    )
    assert brokercheck.compare(e, ex) == [
        Difference("type", "direct", "topic"),
        Difference("durable", False, True),
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': "
            "received the value 'quorum' of type 'longstr' but current is none",
            Difference("x-queue-type", "quorum", None),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': "
            "received 'false' but current is 'true'",
            Difference("durable", "false", "true"),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': "
            "received 'topic' but current is 'direct'",
            Difference("type", "topic", "direct"),
        ),
        (
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': "
            "received the value '5' of type 'signedint' but current is the value '7' of type "
            "'signedint'",
            Difference("x-max-length", "5", "7"),
        ),
        ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q' in vhost '/'", None),
    ],
)
def test_parse_refusal(text: str, expected: Difference | None) -> None:
    assert brokercheck.parse_refusal(text) == expected


def test_migration_advice() -> None:
    diffs = [Difference("x-queue-type", "quorum", "classic")]
    steps = brokercheck.migration(queue("orders"), diffs, rpc=False)
    assert any("new queue name" in s for s in steps)
    assert any("rabbitmqctl delete_queue orders" in s for s in steps)
    assert steps[-1] == "or keep what the broker has: configure queue_type = classic"
    # an rpc queue is named by its topic: no new queue name to offer
    assert not any(
        "new queue name" in s for s in brokercheck.migration(queue("orders"), diffs, rpc=True)
    )
    ex = Expected(
        kind="exchange", name="x", bindings=("b1",), type="direct", durable=True, auto_delete=False
    )
    steps = brokercheck.migration(ex, [Difference("type", "direct", "topic")], rpc=False)
    assert "new exchange name" in steps[0]
    assert steps[-1] == "or keep what the broker has: configure an exchange of type topic"


def test_expected_entities() -> None:
    common: dict[str, Any] = dict(
        handler="echo", durable=True, prefetch_count=1, acknowledge="after", max_retries=0
    )
    parsed = [
        Binding(
            name="a", type="direct", exchange="shared", queue="qa", routing_keys=("k",), **common
        ),
        Binding(
            name="b",
            type="direct",
            exchange="shared",
            queue="qb",
            routing_keys=("k",),
            dead_letter_queue="parked",
            **common,
        ),
        Binding(
            name="f",
            type="fanout",
            exchange="fan",
            exclusive=True,
            auto_delete=True,
            **dict(common, durable=False),
        ),
    ]
    found = {(e.kind, e.name): e for e in brokercheck.expected_entities(parsed)}
    assert found[("exchange", "shared")].bindings == ("a", "b")
    assert found[("queue", "qa")].skip is None
    assert found[("queue", "parked")].durable
    per_process = [e for e in found.values() if e.kind == "queue" and e.bindings == ("f",)]
    assert len(per_process) == 1 and per_process[0].skip is not None
    assert ("exchange", "") not in found


def test_report_lines() -> None:
    e = queue("orders", arguments={"x-queue-type": "quorum"})
    finding = brokercheck.Finding(
        e,
        brokercheck.CONFLICT,
        reason="406 PRECONDITION_FAILED - ...",
        differences=(Difference("x-queue-type", "quorum", "classic"),),
        messages=7,
        migration=("drain it",),
    )
    result = brokercheck.BrokerCheck(
        broker="amqp://guest:***@h:5672/%2F", findings=(finding,), management="management API x"
    )
    text = "\n".join(result.lines())
    assert "CONFLICT  queue 'orders' (binding b1)" in text
    assert "differs: x-queue-type: configured quorum, broker has classic" in text
    assert "the queue holds 7 message(s)" in text
    assert "migrate: drain it" in text
    assert result.lines()[-1].startswith("broker: 1 conflict(s)")


def test_quorum_binding_expects_quorum_delay_queues_and_parking_lot() -> None:
    b = Binding(
        name="q",
        type="direct",
        handler="echo",
        exchange="ex",
        durable=True,
        prefetch_count=1,
        acknowledge="after",
        queue="jobs",
        routing_keys=("k",),
        queue_arguments={"x-queue-type": "quorum", "x-max-length": 1000},
        max_retries=1,
        retry_delay=0.5,
        dead_letter_queue="parked",
    )
    found = {(e.kind, e.name): e for e in brokercheck.expected_entities([b])}
    delay = found[("queue", "jobs.retry.500.quorum")]
    assert delay.queue_type == "quorum" and delay.durable
    assert found[("queue", "parked")].queue_type == "quorum"
    jobs = found[("queue", "jobs")]
    assert brokercheck.compare(jobs, QUORUM_QUEUE) == []  # the same type and arguments
    assert brokercheck.compare(jobs, dict(CLASSIC_QUEUE, name="jobs")) == [
        Difference("x-queue-type", "quorum", "classic"),
        Difference("x-max-length", 1000, None),
    ]
