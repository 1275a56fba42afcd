"""direct / topic / fanout bindings, queue properties and ack policy, on the real broker."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pika
import pytest

from tests.functional.conftest import consumer_count, message_count
from tests.functional.support import (
    PikaClient,
    Workers,
    queue_drained,
    queue_info,
    records,
)
from tests.helpers import rabbitmqctl_command, wait_for


def event_keys(d: Any) -> list[str]:
    return sorted(r["routing_key"] for r in records(d, kind="event"))


def direct(uid: str, **options: Any) -> dict[str, Any]:
    """A direct binding on exchange ex-UID, queue q-UID, key rk-UID (override with options)."""
    return {
        "type": "direct",
        "handler": "recorder",
        "exchange": f"ex-{uid}",
        "queue": f"q-{uid}",
        "routing_key": f"rk-{uid}",
        **options,
    }


# -- routing ---------------------------------------------------------------------------


def test_direct_binding_with_several_keys(workers: Workers, amqp: PikaClient, uid: str) -> None:
    ex = f"ex-{uid}"
    keys = [f"k1-{uid}", f"k2-{uid}", "k3.with.dots"]
    d = workers.start({"d": direct(uid, routing_key=",".join(keys))})
    for key in keys:
        amqp.publish(ex, key, {"key": key})
    # exact keys only: anything else has no route at all (mandatory + confirm)
    for other in (f"k4-{uid}", "k3.with", "k3.with.dots.more", "#", ""):
        with pytest.raises(pika.exceptions.UnroutableError):
            amqp.publish(ex, other, {"key": other})
    wait_for(lambda: len(records(d, kind="event")) >= 3, 10, message="3 events")
    assert event_keys(d) == sorted(keys)
    wait_for(lambda: queue_drained(f"q-{uid}"), 10, message="queue drained")
    assert len(records(d, kind="event")) == 3


def test_topic_binding_patterns(workers: Workers, amqp: PikaClient, uid: str) -> None:
    ex = f"ex-{uid}"
    d = workers.start(
        {
            "t": {
                "type": "topic",
                "handler": "recorder",
                "exchange": ex,
                "queue": f"q-{uid}",
                "routing_key": "a.*.c, logs.#",
            }
        }
    )
    matching = ["a.b.c", "a.xyz.c", "logs", "logs.x", "logs.x.y.z"]
    not_matching = ["a.c", "a.b.b.c", "a.b.c.d", "x.a.b.c", "logs2", "x.logs", "b.b.c"]
    for key in matching:
        amqp.publish(ex, key, {"key": key})
    for key in not_matching:
        with pytest.raises(pika.exceptions.UnroutableError):
            amqp.publish(ex, key, {"key": key})
    wait_for(lambda: len(records(d, kind="event")) >= len(matching), 10, message="matching events")
    assert event_keys(d) == sorted(matching)
    assert [r["exchange"] for r in records(d, kind="event")] == [ex] * len(matching)


def test_topic_binding_default_key_is_hash(workers: Workers, amqp: PikaClient, uid: str) -> None:
    ex = f"ex-{uid}"
    d = workers.start(
        {"t": {"type": "topic", "handler": "recorder", "exchange": ex, "queue": f"q-{uid}"}}
    )
    for key in ("", "one", "a.b.c.d"):
        amqp.publish(ex, key, {"key": key})
    wait_for(lambda: len(records(d, kind="event")) >= 3, 10, message="3 events")
    assert event_keys(d) == ["", "a.b.c.d", "one"]


def test_fanout_default_queue_gives_every_process_a_copy(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    ex = f"fx-{uid}"
    binding = {"f": {"type": "fanout", "handler": "recorder", "exchange": ex}}
    d1 = workers.start(binding, name="w1")
    d2 = workers.start(binding, name="w2")
    for i in range(3):
        amqp.publish(ex, f"any-{i}", {"i": i})
    for d in (d1, d2):
        wait_for(lambda d=d: len(records(d, kind="event")) >= 3, 10, message="3 events each")
    for d in (d1, d2):
        assert sorted(r["body"]["i"] for r in records(d, kind="event")) == [0, 1, 2]
    # the per-process queues are exclusive, auto-delete, transient, and one per process
    mine = [q for q in _all_queues() if q["name"].startswith(f"{ex}_f_")]
    assert len(mine) == 2
    for q in mine:
        assert (q["durable"], q["auto_delete"], q["exclusive"]) == (False, True, True), q
    d1.stop()
    wait_for(
        lambda: len([q for q in _all_queues() if q["name"].startswith(f"{ex}_f_")]) == 1,
        10,
        message="the stopped process's fanout queue gone",
    )


def test_fanout_named_queue_is_shared(workers: Workers, amqp: PikaClient, uid: str) -> None:
    ex, queue = f"fx-{uid}", f"fq-{uid}"
    binding = {"f": {"type": "fanout", "handler": "recorder", "exchange": ex, "queue": queue}}
    d1 = workers.start(binding, name="w1")
    d2 = workers.start(binding, name="w2")
    d2.wait_consuming(queue)
    wait_for(lambda: consumer_count(queue) == 2, 10, message="2 consumers on the named queue")
    q = queue_info(queue)
    assert q is not None
    assert (q["durable"], q["auto_delete"], q["exclusive"]) == (True, False, False)
    for i in range(6):
        amqp.publish(ex, "ignored", {"i": i})
    wait_for(
        lambda: len(records(d1, kind="event")) + len(records(d2, kind="event")) >= 6,
        10,
        message="6 events in all",
    )
    got = [r["body"]["i"] for d in (d1, d2) for r in records(d, kind="event")]
    assert sorted(got) == list(range(6))  # each once: a shared queue, competing consumers


def _all_queues() -> list[dict[str, Any]]:
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
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return json.loads(out or "[]")


# -- queue properties ------------------------------------------------------------------


#: what RabbitMQ 4.x writes into the arguments of a queue declared without it (the queue
#: type it chose, the vhost's default); 3.10 lists only the arguments the client sent
_BROKER_ADDED = {"x-queue-type": "classic"}


def _args(q: dict[str, Any]) -> dict[str, Any]:
    """The arguments the queue was declared with (rabbitmqctl's json formatter lists them
    as [name, type, value] triples), without the one RabbitMQ 4.x adds itself."""
    raw = q["arguments"]
    args = {a[0]: a[-1] for a in raw} if isinstance(raw, list) else dict(raw)
    return {k: v for k, v in args.items() if _BROKER_ADDED.get(k) != v}


def test_queue_properties_applied(workers: Workers, amqp: PikaClient, uid: str) -> None:
    workers.start(
        {
            "props": direct(
                uid,
                queue=f"qp-{uid}",
                durable="false",
                auto_delete="true",
                queue_arguments="x-max-length:100,x-message-ttl:60000,x-overflow:reject-publish",
            ),
            "excl": direct(
                uid,
                queue=f"qx-{uid}",
                exchange=f"ex-{uid}",
                durable="false",
                exclusive="true",
                routing_key=f"x-{uid}",
            ),
            # the exchange is declared with the binding's durable flag: its own exchange
            "dflt": direct(uid, queue=f"qd-{uid}", exchange=f"exd-{uid}"),
        }
    )
    p, x, d = (queue_info(f"{n}-{uid}") for n in ("qp", "qx", "qd"))
    assert p is not None and x is not None and d is not None
    assert (p["durable"], p["auto_delete"], p["exclusive"]) == (False, True, False)
    assert _args(p) == {"x-max-length": 100, "x-message-ttl": 60000, "x-overflow": "reject-publish"}
    # (kombu makes every exclusive queue auto-delete too, whatever auto_delete says)
    assert (x["durable"], x["exclusive"]) == (False, True)
    assert (d["durable"], d["auto_delete"], d["exclusive"]) == (True, False, False)
    assert _args(x) == {} and _args(d) == {}
    # the broker itself refuses an inequivalent redeclaration (throwaway channel)
    ch = amqp.conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(
            f"qp-{uid}", durable=False, auto_delete=True, arguments={"x-max-length": 5}
        )
    assert exc.value.reply_code == 406
    # exclusive: owned by the daemon's connection, locked for everybody else
    ch = amqp.conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.basic_consume(f"qx-{uid}", lambda *a: None)
    assert exc.value.reply_code == 405


# -- acknowledgement -------------------------------------------------------------------


@pytest.mark.parametrize("acknowledge", ["after", "before"])
def test_acknowledge_after_vs_before(
    workers: Workers, amqp: PikaClient, uid: str, acknowledge: str
) -> None:
    queue = f"q-{uid}"
    d = workers.start({"ack": direct(uid, prefetch_count=1, acknowledge=acknowledge)})
    for i in range(2):
        amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "slow", "args": {"seconds": 1.5, "i": i}})
    wait_for(lambda: records(d, kind="start"), 10, message="the first slow cast started")
    if acknowledge == "after":
        # prefetch 1 and no ack yet: the second message waits in the queue
        assert message_count(queue) == 1
        q = queue_info(queue)
        assert q is not None and q["messages_unacknowledged"] == 1
    else:
        # acked on receipt: the broker hands over the second one at once
        wait_for(
            lambda: len(records(d, kind="start")) == 2,
            1.2,
            message="the second slow cast started while the first runs",
        )
        assert message_count(queue) == 0
    wait_for(
        lambda: len(records(d, kind="rpc", method="slow")) == 2, 10, message="both slow casts done"
    )
    starts = records(d, kind="start")
    first_done = records(d, kind="rpc", method="slow")[0]
    if acknowledge == "after":
        assert starts[1]["time"] >= first_done["time"]
    else:
        assert starts[1]["time"] < first_done["time"]
    wait_for(lambda: queue_drained(queue), 10, message="queue drained")


@pytest.mark.parametrize("method", ["fail", "reject", "requeue"])
def test_failed_cast_without_retries_is_dead_lettered_not_redelivered(
    workers: Workers, amqp: PikaClient, uid: str, method: str
) -> None:
    queue = f"q-{uid}"
    d = workers.start({"c": direct(uid, max_retries=0)})
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": method, "args": {"tag": uid}})
    wait_for(lambda: records(d, method=method), 10, message=f"{method} handled")
    wait_for(lambda: queue_drained(queue), 10, message="queue drained (ready 0, unacked 0)")
    # a later message is handled after it: the failed one does not come back
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"after": method}})
    wait_for(lambda: records(d, method="record"), 10, message="the sentinel cast handled")
    wait_for(lambda: queue_drained(queue), 10, message="queue drained again")
    assert len(records(d, method=method)) == 1
    assert d.alive()
    assert f"cast '{method}'" in d.log() and "dead-lettered" in d.log()
