"""Plain AMQP RPC, casts and events from a real `pika` client against the real daemon."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.functional.support import PikaClient, Workers, queue_drained, records
from tests.helpers import wait_for

# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def api(workers: Workers, uid: str) -> Any:
    """A daemon with a direct binding (exchange ex-UID, key rk-UID, queue q-UID)."""
    d = workers.start(
        {
            "api": {
                "type": "direct",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": f"q-{uid}",
                "routing_key": f"rk-{uid}",
            }
        }
    )
    d.exchange, d.key, d.queue = f"ex-{uid}", f"rk-{uid}", f"q-{uid}"
    return d


# -- tests -------------------------------------------------------------------------------


def test_call_with_reply_to_and_correlation_id(api: Any, amqp: PikaClient) -> None:
    reply_to = amqp.reply_queue()
    corr = uuid.uuid4().hex
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "record", "args": {"x": 1, "s": "é"}, "context": {"user": "u1"}},
        reply_to=reply_to,
        correlation_id=corr,
    )
    ((props, body),) = amqp.wait_replies(1)
    assert props.correlation_id == corr
    assert json.loads(body) == {"result": {"x": 1, "s": "é"}}
    (rec,) = records(api, method="record")
    assert rec["ctxt"] == {"user": "u1"} and rec["args"] == {"x": 1, "s": "é"}


def test_error_reply(api: Any, amqp: PikaClient) -> None:
    reply_to = amqp.reply_queue()
    corr = uuid.uuid4().hex
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "fail", "args": {"tag": "t1"}},
        reply_to=reply_to,
        correlation_id=corr,
    )
    ((props, body),) = amqp.wait_replies(1)
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
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "nope", "args": {}},
        reply_to=reply_to,
        correlation_id="c-1",
    )
    ((props, body),) = amqp.wait_replies(1)
    assert props.correlation_id == "c-1"
    assert json.loads(body)["error"]["type"] == "NoSuchMethod"


def test_direct_reply_to(api: Any, amqp: PikaClient) -> None:
    amqp.consume("amq.rabbitmq.reply-to")  # auto_ack, before publishing: RabbitMQ requires it
    corrs = [uuid.uuid4().hex for _ in range(3)]
    for i, corr in enumerate(corrs):
        amqp.publish(
            api.exchange,
            api.key,
            {"method": "record", "args": {"i": i}},
            reply_to="amq.rabbitmq.reply-to",
            correlation_id=corr,
        )
    got = amqp.wait_replies(3)
    assert {p.correlation_id: json.loads(b) for p, b in got} == {
        corr: {"result": {"i": i}} for i, corr in enumerate(corrs)
    }


def test_json_method_without_reply_to_is_a_cast(api: Any, amqp: PikaClient) -> None:
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "record", "args": {"cast": True}, "context": {"r": "req-9"}},
    )
    (rec,) = wait_for(lambda: records(api, method="record"), 10, message="the cast recorded")
    assert rec["args"] == {"cast": True} and rec["ctxt"] == {"r": "req-9"}
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")


def test_json_without_method_is_an_event(api: Any, amqp: PikaClient) -> None:
    body = {"event_type": "compute.instance.create", "payload": {"id": 7}}
    amqp.publish(api.exchange, api.key, body, headers={"h1": "v1"})
    (rec,) = wait_for(lambda: records(api, kind="event"), 10, message="the event recorded")
    assert rec["body"] == body
    assert rec["routing_key"] == api.key and rec["exchange"] == api.exchange
    assert rec["headers"] == {"h1": "v1"} and rec["redelivered"] is False
    assert records(api, kind="rpc") == []
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")
