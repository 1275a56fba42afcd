"""Quorum bindings (queue_type = quorum) against the real broker: quorum delay queues and
parking lot, the delivery limit (x-delivery-limit) bounding a crash loop, and an rpc
binding sharing a topic with a real oslo.messaging server using rabbit_quorum_queue."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    consumer_count,
    delete_exchanges,
    delete_queues,
)
from tests.functional.support import (
    PikaClient,
    Workers,
    direct,
    parked,
    queue_drained,
    queue_info,
    records,
)
from tests.helpers import rabbitmqctl_command, wait_for

CTXT = {"request_id": "req-q", "user_id": "u1", "project_id": "p1"}


def queue_types() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (type, arguments) of every queue, as `rabbitmqctl list_queues` shows them."""
    out = subprocess.run(
        [
            *rabbitmqctl_command(),
            "list_queues",
            "-q",
            "--formatter",
            "json",
            "name",
            "type",
            "arguments",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {
        q["name"]: (q["type"], {k: v for k, _, v in q["arguments"]})
        for q in json.loads(out or "[]")
    }


def parked_count(queue: str) -> int:
    return int((queue_info(queue) or {}).get("messages_ready") or 0)


def test_failing_cast_is_retried_through_quorum_delay_queues_then_parked(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    dlq = f"dlq-{uid}"
    delays = [f"q-{uid}.retry.200.quorum", f"q-{uid}.retry.400.quorum"]
    workers.queues |= {dlq, *delays}
    d = workers.start(
        {
            "c": direct(
                uid, queue_type="quorum", max_retries=2, retry_delay=0.2, dead_letter_queue=dlq
            )
        }
    )
    types = queue_types()
    assert {name: types[name][0] for name in (f"q-{uid}", dlq, *delays)} == dict.fromkeys(
        (f"q-{uid}", dlq, *delays), "quorum"
    )
    assert types[delays[0]][1]["x-dead-letter-strategy"] == "at-least-once"
    assert f"q-{uid}.retry.200" not in types  # never the classic delay queue's name

    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"good": uid}})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "fail", "args": {"tag": uid}})
    wait_for(lambda: parked_count(dlq) == 1, 20, message="the message in the parking lot")
    assert len(records(d, method="fail")) == 3  # the first try and 2 retries
    assert len(records(d, method="record")) == 1
    [(headers, body)] = parked(dlq)
    assert body == {"method": "fail", "args": {"tag": uid}}
    assert headers["x-rpcworker-retries"] == 2
    assert "recorder was asked to fail" in headers["x-rpcworker-failure"]
    assert queue_drained(f"q-{uid}")
    assert all(queue_drained(q) for q in delays)


def test_delivery_limit_parks_the_broker_s_last_delivery(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """delivery_limit = 2: the broker delivers x-delivery-count 0, 1, 2 and then drops the
    message. The handler kills its worker on counts 0 and 1; the worker parks count 2
    without running it (max_redeliveries = 10 would have let it run)."""
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq}
    d = workers.start(
        {
            "c": direct(
                uid,
                queue_type="quorum",
                delivery_limit=2,
                max_redeliveries=10,
                dead_letter_queue=dlq,
                prefetch_count=1,
            )
        }
    )
    assert queue_types()[f"q-{uid}"] == (
        "quorum",
        {"x-queue-type": "quorum", "x-delivery-limit": 2},
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "crash", "args": {"tag": uid}})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"after": uid}})
    crashes = 0
    for _ in range(6):  # restart the worker after each crash, as a supervisor would
        wait_for(
            lambda: not d.alive() or parked_count(dlq) == 1,
            30,
            message="a crash or the parked message",
        )
        if d.alive():
            break
        assert d.wait_exit(10) == 70
        crashes += 1
        d.start()
        d.wait_log("Consuming:", timeout=30)
    assert crashes == 2  # x-delivery-count 0 and 1 ran; 2 was the broker's last
    assert len(records(d, kind="start", method="crash")) == 2
    wait_for(
        lambda: records(d, method="record"), 15, message="the message behind the poison one handled"
    )
    [(headers, body)] = parked(dlq)
    assert body == {"method": "crash", "args": {"tag": uid}}
    assert "delivery limit" in headers["x-rpcworker-failure"]
    assert "x-delivery-count 2" in headers["x-rpcworker-failure"]
    wait_for(lambda: queue_drained(f"q-{uid}"), 10, message="the work queue empty")
    assert "poison message" in d.log()


def _crashes_until_parked(d: Any, dlq: str, most: int) -> int:
    """Restart the worker after each crash (as a supervisor would) until the poison
    message is parked; how many times its handler ran."""
    crashes = 0
    for _ in range(most):
        wait_for(
            lambda: not d.alive() or parked_count(dlq) == 1,
            30,
            message="a crash or the parked message",
        )
        if d.alive():
            return crashes
        assert d.wait_exit(10) == 70
        crashes += 1
        d.start()
        d.wait_log("Consuming:", timeout=30)
    raise AssertionError(f"still not parked after {crashes} crashes")


def test_poison_bound_without_a_delivery_limit(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """No delivery_limit: max_redeliveries (3) bounds the crash loop on 3.10 (no limit of
    the broker's) and on 4.x (whose default limit, 20, is then never reached): the
    handler runs at x-delivery-count 0..3 and count 4 is parked without running."""
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq}
    d = workers.start(
        {
            "c": direct(
                uid,
                queue_type="quorum",
                max_redeliveries=3,
                dead_letter_queue=dlq,
                prefetch_count=1,
            )
        }
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "crash", "args": {"tag": uid}})
    crashes = _crashes_until_parked(d, dlq, 8)
    print(f"\nno delivery_limit, max_redeliveries 3: the handler ran {crashes} times")
    assert crashes == 4
    [(headers, body)] = parked(dlq)
    assert body == {"method": "crash", "args": {"tag": uid}}
    assert "redelivered 4 times (max_redeliveries 3)" in headers["x-rpcworker-failure"]


# -- beside a real oslo.messaging server with rabbit_quorum_queue = True --------------

om = pytest.importorskip("oslo_messaging")


@pytest.fixture
def quorum_transport() -> Iterator[Any]:
    """An oslo transport configured with rabbit_quorum_queue = True and
    rabbit_quorum_delivery_limit = 3 (its [oslo_messaging_rabbit] options, given in the
    transport URL so that the module-wide global CONF of other tests stays untouched)."""
    from oslo_config import cfg

    om.set_transport_defaults(control_exchange="openstack")
    if not cfg.CONF._args:  # the GLOBAL CONF, as oslo.messaging 18 requires
        cfg.CONF([], project="rpcworker-interop")
    url = (
        f"rabbit://guest:guest@{BROKER_HOST}:{BROKER_PORT}/"
        "?rabbit_quorum_queue=true&rabbit_quorum_delivery_limit=3"
    )
    t = om.get_rpc_transport(cfg.CONF, url=url)
    yield t
    t.cleanup()


class Endpoint:
    def record(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return dict(kwargs, by="oslo")


def test_quorum_rpc_binding_shares_a_topic_with_an_oslo_quorum_server(
    quorum_transport: Any, daemon_factory: Any, tmp_path: Any, uid: str
) -> None:
    topic, exchange = f"tq-{uid}", f"qex-{uid}"  # a durable exchange of our own
    oslo_server, server = f"oslo-{uid}", f"w-{uid}"
    queues = [topic, f"{topic}.{oslo_server}", f"{topic}.{server}"]
    target = om.Target(topic=topic, server=oslo_server, exchange=exchange)
    oslo = om.get_rpc_server(quorum_transport, target, [Endpoint()])
    d = None
    try:
        oslo.start()
        wait_for(
            lambda: consumer_count(f"{topic}.{oslo_server}") > 0,
            15,
            message="the oslo server consuming",
        )
        d = daemon_factory(f"""\
[DEFAULT]
bindings = c
host = {server}
graceful_shutdown_timeout = 10
[broker]
hostname = {BROKER_HOST}
port = {BROKER_PORT}
[binding:c]
type = rpc
handler = recorder
exchange = {exchange}
topic = {topic}
queue_type = quorum
delivery_limit = 3
[recorder]
path = {tmp_path / "records.jsonl"}
""")
        d.wait_consuming(topic, f"{topic}.{server}")
        d.wait_log("Consuming:")
        wait_for(
            lambda: consumer_count(topic) == 2,
            15,
            message="the oslo server and rpcworker both consuming the topic queue",
        )
        assert "PRECONDITION_FAILED" not in d.log() and d.alive()
        types = queue_types()
        for name in queues:
            assert types[name] == ("quorum", {"x-queue-type": "quorum", "x-delivery-limit": 3}), (
                name
            )
        client = om.get_rpc_client(
            quorum_transport, om.Target(topic=topic, exchange=exchange, version="1.0"), timeout=15
        )
        assert client.call(CTXT, "record", n=1) in ({"n": 1}, {"n": 1, "by": "oslo"})
        assert client.prepare(server=server).call(CTXT, "record", n=2) == {"n": 2}
        assert consumer_count(topic) == 2 and "PRECONDITION_FAILED" not in d.log()
    finally:
        oslo.stop()
        oslo.wait()
        if d is not None:
            d.stop(timeout=30)
        delete_queues(*queues)
        delete_exchanges(exchange)
