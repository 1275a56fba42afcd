"""The failure policy against the real broker: bounded retries through delay queues,
the parking lot, poison messages, handler timeouts, duplicate suppression, and the
broker-side events (406 on declare, consumer cancel, returned replies)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import kombu
import pytest

from tests.functional.conftest import BROKER_URL, consumer_count, delete_queues
from tests.functional.support import (
    PikaClient,
    Workers,
    direct,
    parked,
    queue_drained,
    queue_info,
    records,
    run_client,
)
from tests.helpers import rabbitmqctl_command, wait_for


def test_failing_cast_is_retried_with_growing_delays_then_parked(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq, f"q-{uid}.retry.300", f"q-{uid}.retry.600"}
    d = workers.start({"c": direct(uid, max_retries=2, retry_delay=0.3, dead_letter_queue=dlq)})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "fail", "args": {"tag": uid}})
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 1,
        20,
        message="the message in the parking lot",
    )
    runs = records(d, method="fail")
    assert len(runs) == 3  # the first try and max_retries = 2 retries
    gaps = [b["time"] - a["time"] for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps[0] >= 0.3 - 0.05 and gaps[1] >= 0.6 - 0.05, gaps
    [(headers, body)] = parked(dlq)
    assert body == {"method": "fail", "args": {"tag": uid}}
    assert headers["x-rpcworker-retries"] == 2
    assert headers["x-rpcworker-binding"] == "c"
    assert headers["x-rpcworker-original-routing-key"] == f"rk-{uid}"
    assert "recorder was asked to fail" in headers["x-rpcworker-failure"]
    assert queue_drained(f"q-{uid}")
    assert "dead-lettered after 2 retries" in d.log()


def test_reject_goes_to_the_parking_lot_at_once(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq}
    d = workers.start({"c": direct(uid, max_retries=3, dead_letter_queue=dlq)})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "reject", "args": {}})
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 1,
        20,
        message="the rejected message in the parking lot",
    )
    assert len(records(d, method="reject")) == 1
    [(headers, _)] = parked(dlq)
    assert "Reject" in headers["x-rpcworker-failure"]


def test_dead_letter_exchange(workers: Workers, amqp: PikaClient, uid: str) -> None:
    dlx, dlq = f"dlx-{uid}", f"dlq-{uid}"
    workers.queues |= {dlq}
    workers.exchanges |= {dlx}
    workers.start(
        {
            "c": direct(
                uid,
                max_retries=0,
                dead_letter_exchange=dlx,
                dead_letter_routing_key="parked",
                dead_letter_queue=dlq,
            )
        }
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "fail", "args": {}})
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 1,
        20,
        message="the message routed through the dead-letter exchange",
    )
    [(headers, _)] = parked(dlq)
    assert headers["x-rpcworker-original-exchange"] == f"ex-{uid}"


def test_hung_handler_times_out_and_the_worker_keeps_serving(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq, f"q-{uid}.retry.200"}
    d = workers.start(
        {"c": direct(uid, max_retries=1, retry_delay=0.2, handler_timeout=1, dead_letter_queue=dlq)}
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "hang", "args": {"seconds": 30}})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"n": 1}})
    wait_for(lambda: records(d, method="record"), 10, message="other work goes on")
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 1,
        20,
        message="the hung message parked after its retry",
    )
    assert len(records(d, kind="start", method="hang")) == 2
    [(headers, _)] = parked(dlq)
    assert "HandlerTimeout" in headers["x-rpcworker-failure"]
    assert "abandoned" in d.log()


def test_a_call_that_times_out_gets_an_error_reply(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    workers.start({"c": direct(uid, handler_timeout=1)})
    reply_q = amqp.reply_queue()
    amqp.publish(
        f"ex-{uid}",
        f"rk-{uid}",
        {"method": "hang", "args": {"seconds": 30}},
        reply_to=reply_q,
        correlation_id="c1",
    )
    [(props, body)] = amqp.wait_replies(1, 15)
    assert props.correlation_id == "c1"
    assert json.loads(body)["error"]["type"] == "HandlerTimeout"


def test_crashing_handler_is_dead_lettered_after_max_redeliveries(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """A handler that kills its process: the supervisor (here the test) restarts the
    worker; the message is counted on each redelivery and parked after the bound."""
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq}
    d = workers.start(
        {"c": direct(uid, max_redeliveries=2, dead_letter_queue=dlq, prefetch_count=1)}
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "crash", "args": {}})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"n": 2}})
    crashes = 0
    for _ in range(6):
        wait_for(
            lambda: not d.alive() or (queue_info(dlq) or {}).get("messages_ready") == 1,
            30,
            message="a crash or the parked message",
        )
        if d.alive():
            break
        assert d.wait_exit(10) == 70
        crashes += 1
        d.start()  # the supervisor restarts the worker on the same config
    assert crashes == 3  # the first delivery and max_redeliveries = 2 redeliveries
    wait_for(
        lambda: records(d, method="record"), 15, message="the message behind the poison one handled"
    )
    [(headers, _)] = parked(dlq)
    assert "redelivered 3 times" in headers["x-rpcworker-failure"]
    assert headers["x-rpcworker-redeliveries"] == 2


def test_crashing_handler_on_a_quorum_queue_uses_the_delivery_count(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """On a quorum queue the broker counts deliveries (x-delivery-count): no copies."""
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq}
    d = workers.start(
        {
            "c": direct(
                uid,
                max_redeliveries=1,
                dead_letter_queue=dlq,
                prefetch_count=1,
                durable="true",
                queue_arguments="x-queue-type:quorum",
            )
        }
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "crash", "args": {}})
    crashes = 0
    for _ in range(5):
        wait_for(
            lambda: not d.alive() or (queue_info(dlq) or {}).get("messages_ready") == 1,
            30,
            message="a crash or the parked message",
        )
        if d.alive():
            break
        crashes += 1
        d.start()
    assert crashes == 2  # the first delivery and max_redeliveries = 1 redelivery
    [(headers, _)] = parked(dlq)
    assert "redelivered 2 times" in headers["x-rpcworker-failure"]
    assert "x-rpcworker-redeliveries" not in headers  # counted by the broker, not by copies


def test_duplicate_request_is_not_run_twice(workers: Workers, amqp: PikaClient, uid: str) -> None:
    d = workers.start({"c": direct(uid)})
    reply_q = amqp.reply_queue()
    body = {"method": "record", "args": {"once": True}}
    for n, corr in enumerate(("a", "b"), 1):  # the second once the first has completed
        amqp.publish(
            f"ex-{uid}",
            f"rk-{uid}",
            body,
            reply_to=reply_q,
            correlation_id=corr,
            message_id=f"mid-{uid}",
        )
        replies = amqp.wait_replies(n, 15)
    assert [json.loads(b) for _, b in replies] == [{"result": {"once": True}}] * 2
    assert len(records(d, method="record")) == 1
    assert "already completed; not run again" in d.log()


def test_precondition_failed_binding_is_reported_and_the_others_go_on(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    bad, good = f"bad-{uid}", f"good-{uid}"
    with kombu.Connection(BROKER_URL) as conn:  # the queue exists with other arguments
        kombu.Queue(f"q-{bad}", durable=True, queue_arguments={"x-max-length": 10})(
            conn.channel()
        ).declare()
    d = workers.start({"bad": direct(bad), "good": direct(good)})
    wait_for(
        lambda: "binding bad: the broker refused its declarations" in d.log(),
        10,
        message="the 406 reported",
    )
    line = next(x for x in d.log().splitlines() if "binding bad: the broker refused" in x)
    assert "PRECONDITION_FAILED" in line and "x-max-length" in line
    amqp.publish(f"ex-{good}", f"rk-{good}", {"method": "record", "args": {"good": 1}})
    wait_for(lambda: records(d, method="record"), 10, message="the good binding serving")
    delete_queues(f"q-{bad}")  # the operator fixes it: the binding recovers
    wait_for(
        lambda: consumer_count(f"q-{bad}") == 1,
        20,
        message="the bad binding declared and consuming again",
    )
    assert d.alive()


def test_deleted_queue_is_redeclared(workers: Workers, amqp: PikaClient, uid: str) -> None:
    d = workers.start({"c": direct(uid)})
    delete_queues(f"q-{uid}")  # the broker sends basic.cancel to the consumer
    wait_for(lambda: consumer_count(f"q-{uid}") == 1, 20, message="queue redeclared")
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"after": 1}})
    wait_for(lambda: records(d, method="record"), 10, message="served again")


def test_returned_reply_is_resent_until_the_reply_queue_appears(workers: Workers, uid: str) -> None:
    workers.start({"c": direct(uid)})
    reply_q = f"late-reply-{uid}"
    workers.queues.add(reply_q)
    with kombu.Connection(BROKER_URL) as conn:
        producer = kombu.Producer(conn.channel(), auto_declare=False)
        producer.publish(
            {"method": "record", "args": {"late": True}},
            exchange=f"ex-{uid}",
            routing_key=f"rk-{uid}",
            serializer="json",
            reply_to=reply_q,
            correlation_id="late",
        )
        wait_for(
            lambda: any("could not be routed" in x for x in workers.daemons[0].log().splitlines()),
            10,
            message="the first return logged",
        )
        q = kombu.Queue(reply_q, durable=False)(conn.channel())
        q.declare()  # the caller's queue appears a little later
        got = wait_for(lambda: q.get(no_ack=True), 15, message="the re-sent reply")
        assert json.loads(got.body) == {"result": {"late": True}}


def test_blocked_connection_is_logged_and_replies_wait_for_unblock(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """A memory alarm blocks the worker's connection when it next publishes: it logs the
    notification, defers further publishing, and everything goes out on unblock."""
    d = workers.start({"c": direct(uid)})
    reply_q = amqp.reply_queue()
    for corr in ("first", "second"):  # requests reach the worker before the alarm
        amqp.publish(
            f"ex-{uid}",
            f"rk-{uid}",
            {"method": "slow", "args": {"seconds": 1.5, "tag": corr}},
            reply_to=reply_q,
            correlation_id=corr,
        )
    wait_for(lambda: len(records(d, kind="start")) == 2, 10, message="both handlers started")
    alarm = [*rabbitmqctl_command(), "set_vm_memory_high_watermark"]
    subprocess.run([*alarm, "0.000001"], check=True, capture_output=True, timeout=60)
    try:
        wait_for(
            lambda: "The broker blocked the connection" in d.log(),
            20,
            message="the connection.blocked notification logged",
        )
    finally:
        subprocess.run([*alarm, "0.4"], check=True, capture_output=True, timeout=60)
    wait_for(
        lambda: "The broker unblocked the connection" in d.log(),
        20,
        message="the connection.unblocked notification logged",
    )
    replies = amqp.wait_replies(2, 20)
    assert sorted(p.correlation_id for p, _ in replies) == ["first", "second"]
    wait_for(lambda: queue_drained(f"q-{uid}"), 10, message="both acked")
    assert d.alive()


@pytest.fixture(autouse=True)
def _memory_watermark_restored() -> Any:
    yield
    subprocess.run(
        [*rabbitmqctl_command(), "set_vm_memory_high_watermark", "0.4"],
        capture_output=True,
        timeout=60,
    )


def test_per_process_fanout_queue_has_no_delay_queues_and_a_failing_fanout_is_parked(
    workers: Workers, uid: str
) -> None:
    """As many queues per process as oslo.messaging: TOPIC_fanout_<uuid> and no
    TOPIC_fanout_<uuid>.retry.*; a failing fanout cast is parked at once, not retried."""
    topic, dlq = f"t-{uid}", f"dlq-{uid}"
    workers.queues |= {dlq, topic, f"{topic}.w1-{uid}"} | {
        f"{q}.retry.{ms}" for q in (topic, f"{topic}.w1-{uid}") for ms in (1000, 2000)
    }
    d = workers.start(
        {
            "r": {
                "type": "rpc",
                "handler": "recorder",
                "topic": topic,
                "max_retries": 2,
                "dead_letter_queue": dlq,
            }
        }
    )
    out = subprocess.run(
        [*rabbitmqctl_command(), "list_queues", "-q", "--formatter", "json", "name"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    mine = sorted(q["name"] for q in json.loads(out) if q["name"].startswith(topic))
    fanout = [q for q in mine if q.startswith(f"{topic}_fanout_")]
    assert len(fanout) == 1, mine
    assert mine == sorted(
        [
            topic,
            f"{topic}.retry.1000",
            f"{topic}.retry.2000",
            f"{topic}.w1-{uid}",
            f"{topic}.w1-{uid}.retry.1000",
            f"{topic}.w1-{uid}.retry.2000",
            fanout[0],
        ]
    ), mine
    p = run_client(d.config_path, "fanout", topic, "fail", "--arg", "tag=f")
    assert p.returncode == 0, p.stderr
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 1,
        20,
        message="the failing fanout cast parked",
    )
    assert len(records(d, method="fail")) == 1  # run once: not retried
    [(headers, _)] = parked(dlq)
    assert headers["x-rpcworker-retries"] == 0
    assert headers["x-rpcworker-original-queue"] == fanout[0]
    assert "has no delay queue (a per-process queue" in d.log()
