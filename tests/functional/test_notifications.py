"""Notification bindings against a real oslo.messaging Notifier and listener, on the real
daemon and broker: arguments, priorities, filters, pools, several exchanges, sharing the
default queues with an oslo listener, the failure policy, and a broker restart."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    consumer_count,
    delete_exchanges,
    delete_queues,
    message_count,
)
from tests.functional.stream import Stream
from tests.functional.support import (
    PikaClient,
    Workers,
    broker_stopped,
    queue_info,
    records,
    run_client,
)
from tests.helpers import wait_for

om = pytest.importorskip("oslo_messaging")
from oslo_config import cfg  # noqa: E402
from oslo_context import context as oslo_context  # noqa: E402

URL = f"rabbit://guest:guest@{BROKER_HOST}:{BROKER_PORT}/"


@pytest.fixture(scope="module")
def transport() -> Iterator[Any]:
    om.set_transport_defaults(control_exchange="openstack")
    if not cfg.CONF._args:  # the GLOBAL CONF, as oslo.messaging 18 requires
        cfg.CONF([], project="rpcworker-interop")
    t = om.get_notification_transport(cfg.CONF, url=URL)
    yield t
    t.cleanup()


def notifier(transport: Any, topic: str, publisher: str = "compute.host1") -> Any:
    return om.Notifier(transport, publisher_id=publisher, driver="messagingv2", topics=[topic])


def binding(topic: str, **options: Any) -> dict[str, Any]:
    return {"type": "notification", "handler": "notified", "topic": topic, **options}


def got(d: Any, **match: Any) -> list[dict[str, Any]]:
    return records(d, kind="notification", **match)


@pytest.fixture
def topic(uid: str) -> Iterator[str]:
    name = f"notif-{uid}"
    yield name
    delete_queues(
        *(f"{name}.{p}" for p in ("info", "error", "sample", "warn", "debug", "audit", "critical")),
        *(
            f"{name}.{p}.retry.{ms}"
            for p in ("info", "error", "sample")
            for ms in (200, 400, 1000, 2000, 4000)
        ),
    )


def test_a_real_notifier_reaches_the_priority_methods(
    workers: Workers, transport: Any, topic: str
) -> None:
    d = workers.start({"n": binding(topic)})
    ctxt = oslo_context.RequestContext(user_id="u1", project_id="p1", request_id="req-1")
    n = notifier(transport, topic)
    n.info(ctxt, "compute.instance.create.end", {"instance_id": "i-1", "size": 2})
    n.error(ctxt, "compute.instance.create.error", {"instance_id": "i-2"})
    n.sample(ctxt, "cpu_util", {"value": 0.5})
    n.warn(ctxt, "compute.instance.slow", {"instance_id": "i-3"})  # no warn() method
    wait_for(lambda: len(got(d)) == 3, 20, message=f"three notifications (log: {d.log_tail()})")
    [info] = got(d, method="info")
    assert info["event_type"] == "compute.instance.create.end"
    assert info["publisher_id"] == "compute.host1"
    assert info["payload"] == {"instance_id": "i-1", "size": 2}
    assert info["ctxt"]["user"] == "u1" and info["ctxt"]["project_id"] == "p1"  # to_dict()
    assert info["ctxt"]["request_id"] == "req-1"
    assert set(info["metadata"]) == {"message_id", "timestamp"}
    assert info["metadata"]["message_id"] and info["metadata"]["timestamp"]
    assert {r["method"] for r in got(d)} == {"info", "error", "sample"}
    # the warn queue was declared by oslo's notifier, not consumed by the worker
    assert consumer_count(f"{topic}.warn") == 0 and message_count(f"{topic}.warn") == 1
    assert consumer_count(f"{topic}.info") == 1


def test_filters_ack_what_they_keep_from_the_handler(
    workers: Workers, transport: Any, topic: str
) -> None:
    d = workers.start(
        {
            "n": binding(
                topic,
                priorities="info",
                filter_event_type=r"compute\.instance\.create\.",
                filter_publisher_id="compute\\.",
            )
        }
    )
    n = notifier(transport, topic)
    n.info({}, "compute.instance.create.end", {"i": 1})
    n.info({}, "compute.instance.delete.end", {"i": 2})  # event type filtered out
    notifier(transport, topic, publisher="image.host").info(
        {}, "compute.instance.create.end", {"i": 3}
    )  # publisher filtered out
    n.info({}, "compute.instance.create.start", {"i": 4})
    wait_for(
        lambda: message_count(f"{topic}.info") == 0 and len(got(d)) == 2,
        20,
        message="all acked, two handled",
    )
    assert sorted(r["payload"]["i"] for r in got(d)) == [1, 4]


def test_pools_each_get_every_notification_and_share_within(
    workers: Workers, transport: Any, topic: str, uid: str
) -> None:
    pools = {"a": [], "b": []}  # type: dict[str, list[Any]]
    for pool, names in (("a", ["a1", "a2"]), ("b", ["b1"])):
        workers.queues.add(f"{pool}-{uid}")
        workers.queues |= {f"{pool}-{uid}.retry.{ms}" for ms in (1000, 2000, 4000)}
        for name in names:
            pools[pool].append(
                workers.start(
                    {
                        "n": binding(
                            topic, pool=f"{pool}-{uid}", prefetch_count=1, priorities="info, error"
                        )
                    },
                    name=name,
                    recorder_delay=0.05,
                )
            )
    n = notifier(transport, topic)
    for i in range(20):
        (n.info if i % 2 else n.error)({}, "x.y", {"i": i})

    def handled(pool: str) -> list[int]:
        return sorted(r["payload"]["i"] for d in pools[pool] for r in got(d))

    wait_for(
        lambda: handled("a") == list(range(20)) and handled("b") == list(range(20)),
        30,
        message="each pool handling every notification",
    )
    a1, a2 = (len(got(d)) for d in pools["a"])
    assert a1 > 0 and a2 > 0 and a1 + a2 == 20  # shared within the pool, once each


def test_one_binding_on_several_exchanges(
    workers: Workers, amqp: PikaClient, topic: str, uid: str
) -> None:
    exchanges = [f"nova-{uid}", f"glance-{uid}"]
    workers.exchanges |= set(exchanges)
    d = workers.start({"n": binding(topic, exchange=", ".join(exchanges), priorities="info")})
    conf = d.config_path
    for i, exchange in enumerate(exchanges):
        result = run_client(
            conf,
            "notify",
            "image.update",
            "--exchange",
            exchange,
            "--topic",
            topic,
            "--arg",
            f"i={i}",
            "--publisher-id",
            f"{exchange}.host",
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["message_id"]
    wait_for(lambda: len(got(d)) == 2, 20, message="both exchanges' notifications")
    assert sorted(r["publisher_id"] for r in got(d)) == sorted(f"{e}.host" for e in exchanges)


def test_sharing_the_default_queues_with_a_real_oslo_listener(
    workers: Workers, transport: Any, topic: str
) -> None:
    """An oslo.messaging notification listener first, rpcworker second, on the same
    exchange, topic and priorities: no 406, and each notification is handled once between
    them."""
    seen: list[int] = []
    lock = threading.Lock()

    class Endpoint:
        def info(
            self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
        ) -> None:
            with lock:
                seen.append(payload["i"])

    listener = om.get_notification_listener(
        transport, [om.Target(topic=topic)], [Endpoint()], executor="threading"
    )
    listener.start()
    try:
        d = workers.start(
            {"n": binding(topic, priorities="info", prefetch_count=1)}, recorder_delay=0.02
        )
        wait_for(
            lambda: consumer_count(f"{topic}.info") == 2,
            20,
            message="the oslo listener and rpcworker on one queue",
        )
        n = notifier(transport, topic)
        for i in range(40):
            n.info({}, "x.y", {"i": i})
        wait_for(lambda: len(seen) + len(got(d)) >= 40, 30, message="40 handled")
        mine = [r["payload"]["i"] for r in got(d)]
        assert sorted(seen + mine) == list(range(40))  # each once between them
        assert mine and seen
        assert "PRECONDITION_FAILED" not in d.log()
    finally:
        listener.stop()
        listener.wait()


def test_a_failing_notification_is_retried_with_backoff_then_parked(
    workers: Workers, transport: Any, topic: str, uid: str
) -> None:
    dlq = f"dlq-{uid}"
    workers.queues.add(dlq)
    d = workers.start(
        {
            "n": binding(
                topic, priorities="info", max_retries=2, retry_delay=0.2, dead_letter_queue=dlq
            )
        }
    )
    n = notifier(transport, topic)
    n.info({}, "x.fail", {"fail": True})
    n.info({}, "x.requeue", {"requeue": True})
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 2,
        30,
        message=f"both parked (log: {d.log_tail()})",
    )
    for event_type in ("x.fail", "x.requeue"):
        attempts = [r["time"] for r in got(d, event_type=event_type)]
        assert len(attempts) == 3  # the first run and two retries, never more
        gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
        assert gaps[0] >= 0.15 and gaps[1] >= 0.35  # 0.2 s, then 0.4 s
    assert message_count(f"{topic}.info") == 0


def test_a_broker_restart_mid_stream_loses_no_notification(
    workers: Workers, topic: str, uid: str
) -> None:
    exchange = f"nova-{uid}"
    workers.exchanges.add(exchange)
    d = workers.start({"n": binding(topic, exchange=exchange, priorities="info", durable="true")})
    key = f"{topic}.info"

    def notification(i: int) -> bytes:
        from rpcworker.wire import envelope

        return envelope.envelope(envelope.oslo_notification("info", "x.y", {"id": i}, "compute.h"))

    stream = Stream(exchange, key, count=600, rate=200.0, body=notification)
    stream.start()
    wait_for(lambda: len(got(d)) >= 150, 30, message="a quarter handled")
    with broker_stopped():
        wait_for(
            lambda: "Connection to the broker lost" in d.log(),
            30,
            message="the worker noticing the restart",
        )
    stream.join(120)
    assert stream.error is None and stream.confirmed == 600, stream.describe()
    wait_for(
        lambda: {r["payload"]["id"] for r in got(d)} == set(range(600)),
        60,
        message=f"every confirmed notification handled (log: {d.log_tail()})",
    )
    ids = [r["payload"]["id"] for r in got(d)]
    print(
        f"\nNOTIFY broker restart: 600 of 600 confirmed notifications handled, "
        f"{len(ids) - 600} duplicates; {stream.describe()}"
    )
    delete_exchanges(exchange)


def test_check_config_broker_sees_the_notification_topology(workers: Workers, topic: str) -> None:
    import subprocess
    import sys

    d = workers.start({"n": binding(topic, exchange="nova", priorities="info")})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpcworker",
            "--check-config",
            "--broker",
            "--config-file",
            str(d.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"queue '{topic}.info' durable=False auto_delete=False" in result.stdout
    assert f"bound to 'nova' with keys ['{topic}.info']" in result.stdout
    assert "broker: consistent" in result.stdout
