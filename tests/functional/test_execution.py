"""Handler execution that survives misbehaving plugins, on the real daemon and broker:
deadlines from the start of the call, stuck threads replaced, per-binding concurrency caps,
recycling (stuck threads, max_messages_per_worker, max_memory_per_worker) and
``async def`` handlers."""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import BROKER_HOST, BROKER_PORT, consumer_count, delete_queues
from tests.functional.support import (
    PikaClient,
    Workers,
    free_port,
    queue_info,
    records,
    scrape,
)
from tests.helpers import http_get, wait_for

om = pytest.importorskip("oslo_messaging")
from oslo_config import cfg  # noqa: E402


def topic_binding(uid: str, name: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "topic",
        "handler": "misbehaving",
        "exchange": f"ex-{uid}",
        "queue": f"{name}-{uid}",
        "routing_key": f"{name}.#",
        **options,
    }


def cast(amqp: PikaClient, uid: str, key: str, method: str, **args: Any) -> None:
    amqp.publish(f"ex-{uid}", key, {"method": method, "args": args})


def parked(amqp: PikaClient, queue: str) -> list[dict[str, Any]]:
    """Take every message of ``queue`` (the parking lot): their bodies."""
    bodies = []
    while True:
        method, _, body = amqp.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(json.loads(body))


def instances(d: Any) -> list[str]:
    """The recorder instances (one per process image) that recorded, in order."""
    seen: list[str] = []
    for r in records(d):
        if r["instance"] not in seen:
            seen.append(r["instance"])
    return seen


# -- hung handlers --------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_more_hung_handlers_than_threads_cost_no_other_message(
    workers: Workers, amqp: PikaClient, uid: str, processes: int
) -> None:
    """Six casts hang for an hour on 4 threads per process (handler_timeout 2 s, no
    retries), then twenty ordinary casts: every one of the twenty is handled, none is
    dead-lettered; the six are, each as HandlerTimeout, and their threads are replaced."""
    dlq = f"dlq-{uid}"
    workers.queues.add(dlq)
    d = workers.start(
        {"w": topic_binding(uid, "w", handler_timeout=2, max_retries=0, dead_letter_queue=dlq)},
        default={"executor_thread_pool_size": 4, "workers": processes},
    )
    for i in range(6):
        cast(amqp, uid, "w.hang", "hang", seconds=3600, i=i)
    wait_for(
        lambda: len(records(d, method="hang")) == 6,
        20,
        message=f"six hung handlers (log: {d.log_tail()})",
    )
    for i in range(20):
        cast(amqp, uid, "w.ok", "record", i=i)
    wait_for(
        lambda: len(records(d, method="record")) == 20,
        30,
        message=f"the twenty ordinary casts handled (log: {d.log_tail()})",
    )
    wait_for(
        lambda: (queue_info(dlq) or {}).get("messages_ready") == 6,
        30,
        message="the six hung casts parked",
    )
    bodies = parked(amqp, dlq)
    assert sorted(b["args"]["i"] for b in bodies) == list(range(6))
    assert {b["method"] for b in bodies} == {"hang"}
    assert sorted(r["args"]["i"] for r in records(d, method="record")) == list(range(20))
    assert "its thread is stuck: a fresh one takes its place" in d.log()
    assert "Recycling" not in d.log()  # 6 stuck threads, max_stuck_threads = 8
    print(
        f"\nEXECUTION hung-pool workers={processes}: 20 of 20 good messages handled, "
        f"0 dead-lettered; 6 of 6 hung ones parked as HandlerTimeout"
    )


def test_a_stuck_binding_does_not_starve_another(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """Binding a (max_concurrency 2) hangs on 6 casts; binding b still gets the other two
    threads of the pool and handles its stream while a's handlers are still hung."""
    d = workers.start(
        {
            "a": topic_binding(uid, "a", handler_timeout=120, max_concurrency=2),
            "b": topic_binding(uid, "b", max_concurrency=2),
        },
        default={"executor_thread_pool_size": 4},
    )

    def stream(tag: str) -> float:
        start = time.monotonic()
        for i in range(40):
            cast(amqp, uid, "b.x", "record", tag=tag, i=i)
        wait_for(
            lambda: len([r for r in records(d, method="record") if r["args"]["tag"] == tag]) == 40,
            30,
            message=f"b's stream {tag} handled (log: {d.log_tail()})",
        )
        return time.monotonic() - start

    alone = stream("alone")
    for i in range(6):
        cast(amqp, uid, "a.x", "hang", seconds=120, i=i)
    wait_for(
        lambda: len(records(d, kind="start", method="hang")) == 2,
        20,
        message="a holds its two threads",
    )
    hung = stream("hung")
    # a is still hung: two started, none finished or timed out, four waiting their turn
    assert len(records(d, kind="start", method="hang")) == 2
    assert "HandlerTimeout" not in d.log()
    print(
        f"\nEXECUTION concurrency caps: b 40 casts in {alone:.2f} s alone, {hung:.2f} s while a "
        f"holds its 2 of 4 threads hung"
    )
    d.signal(15)  # a's handlers never return: do not wait for them
    d.signal(15)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_hung_binding_leaves_threads_to_the_others_by_default(
    workers: Workers, amqp: PikaClient, uid: str, processes: int
) -> None:
    """The operator's setup, nothing tuned: two bindings, 4 threads per process, no
    max_concurrency. Binding a hangs on 8 casts (well within the default handler_timeout);
    then 20 casts go to b: all 20 are handled while a still hangs, a holds 3 threads per
    process (the fair default), and /healthz and /metrics say that a is saturated."""
    port = free_port()
    d = workers.start(
        {"a": topic_binding(uid, "a"), "b": topic_binding(uid, "b")},
        default={"executor_thread_pool_size": 4, "workers": processes},
        extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n",
    )
    assert "the most each binding's deliveries hold at once: a 3, b 3" in d.log()
    for name in ("a", "b"):  # every process consumes (the broker shares the casts out)
        wait_for(
            lambda q=f"{name}-{uid}": consumer_count(q) == processes,
            30,
            message=f"{processes} consumer(s) on binding {name}'s queue",
        )
    for i in range(8):
        cast(amqp, uid, "a.x", "hang", seconds=3600, i=i)

    def hung() -> list[dict[str, Any]]:
        return records(d, kind="start", method="hang")

    # the broker shares a's 8 casts out among the processes: each runs 3 at most, the
    # rest wait for a thread
    wait_for(
        lambda: len(hung()) >= 3 and len(hung()) + scrape(port)[("rpcworker_waiting", "a")] == 8,
        20,
        message=f"a's 8 casts running or waiting (log: {d.log_tail()})",
    )
    per_process = collections.Counter(r["instance"] for r in hung())
    assert max(per_process.values()) == 3 and len(per_process) <= processes, per_process
    for i in range(20):
        cast(amqp, uid, "b.x", "record", i=i)
    wait_for(
        lambda: len(records(d, method="record")) == 20,
        30,
        message=f"b's 20 casts handled while a hangs (log: {d.log_tail()})",
    )
    assert sorted(r["args"]["i"] for r in records(d, method="record")) == list(range(20))
    running = len(hung())
    assert sum(per_process.values()) == running  # a still hangs: no more started
    code, health = wait_for(
        lambda: (r := http_get(port, "/healthz"))[0] == 200 and "saturated" in r[1] and r,
        10,
        message="/healthz names the saturated binding",
    )
    assert "binding a saturated (3 of 3 threads busy" in health and "binding b" not in health
    m = scrape(port)
    assert m[("rpcworker_waiting", "a")] == 8 - running
    assert m[("rpcworker_binding_thread_limit", "a")] == 3 * processes
    assert m[("rpcworker_waiting", "b")] == 0
    print(
        f"\nEXECUTION fair default workers={processes}: b 20 of 20 casts handled while a "
        f"hangs on {running} threads ({8 - running} waiting); /healthz: {health.strip()}"
    )
    d.signal(15)  # a's handlers never return: do not wait for them
    d.signal(15)


# -- recycling --------------------------------------------------------------------------


def log_times(d: Any, pattern: str) -> list[float]:
    """Timestamps (s since the epoch) of the log lines that match ``pattern``."""
    out = []
    for line in d.log().splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", line)
        if m and re.search(pattern, line):
            out.append(
                time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S"))
                + float("0." + m.group(1).split(".")[1])
            )
    return out


N_STREAM = 200


@pytest.mark.parametrize("processes", [1, 2])
def test_max_messages_per_worker_recycles_without_losing_a_message(
    workers: Workers, amqp: PikaClient, uid: str, processes: int
) -> None:
    d = workers.start(
        {"r": topic_binding(uid, "r", prefetch_count=8)},
        default={
            "max_messages_per_worker": 25,
            "workers": processes,
            "executor_thread_pool_size": 4,
        },
        recorder_delay=0.05,
    )  # a stream, not one burst: recycles mid-stream
    for i in range(N_STREAM):  # publisher-confirmed
        cast(amqp, uid, "r.x", "record", i=i)
    wait_for(
        lambda: {r["args"]["i"] for r in records(d, method="record")} == set(range(N_STREAM)),
        90,
        message=f"all {N_STREAM} casts handled (log: {d.log_tail()})",
    )
    handled = [r["args"]["i"] for r in records(d, method="record")]
    assert d.alive()
    assert "Recycling this worker process: " in d.log()
    assert "messages handled (max_messages_per_worker = 25)" in d.log()
    if processes == 1:  # re-executed in place: the pid stays, the process image is new
        assert len(instances(d)) >= 4 and len({r["pid"] for r in records(d)}) == 1
    else:  # the supervisor started new worker processes, one at a time
        assert len({r["pid"] for r in records(d)}) >= 3
        assert_one_recycle_at_a_time(d.log())
    starts = log_times(d, "Recycling this worker process")
    back = log_times(d, "Consuming: ")
    gaps = [min(t for t in back if t > s) - s for s in starts if any(t > s for t in back)]
    print(
        f"\nEXECUTION recycle workers={processes}: {N_STREAM} of {N_STREAM} casts "
        f"handled, {len(handled) - N_STREAM} run twice, {len(starts)} recycles, time to "
        f"consume again {min(gaps):.2f}-{max(gaps):.2f} s"
    )


def assert_one_recycle_at_a_time(log: str) -> None:
    """No worker process begins to recycle while another one is recycling, or before the
    replacement of the last one consumes."""
    busy: str | None = None  # the pid recycling, or "replacement" until it consumes
    seen = 0
    for line in log.splitlines():
        pid = line.split()[2] if len(line.split()) > 2 else ""
        if "Recycling this worker process" in line:
            assert busy is None, f"pid {pid} recycles while {busy} is not done:\n{log}"
            busy, seen = pid, seen + 1
        elif "recycled itself; a fresh one starts" in line:
            busy = "replacement"
        elif "Consuming: " in line and busy == "replacement":
            busy = None
    assert seen >= 2, log


def test_max_memory_per_worker_recycles_a_leaking_handler(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    d = workers.start(
        {"m": topic_binding(uid, "m", prefetch_count=1)},
        default={"max_memory_per_worker": 150, "executor_thread_pool_size": 1},
        recorder_delay=0.3,
    )  # the RSS is looked at twice a second
    for i in range(12):  # 20 MiB kept per cast: past 150 MiB within a few
        cast(amqp, uid, "m.x", "leak", mib=20, i=i)
    wait_for(
        lambda: {r["args"]["i"] for r in records(d, method="leak")} == set(range(12)),
        60,
        message=f"all 12 leaking casts handled (log: {d.log_tail()})",
    )
    assert "(max_memory_per_worker = 150)" in d.log()
    assert len(instances(d)) >= 2 and d.alive()


def test_too_many_stuck_threads_recycle_the_process(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """max_stuck_threads = 1: the second stuck thread recycles the process, which kills
    the stuck threads; the service goes on in the fresh process."""
    d = workers.start(
        {"s": topic_binding(uid, "s", handler_timeout=1, max_retries=0)},
        default={
            "max_stuck_threads": 1,
            "executor_thread_pool_size": 2,
            "graceful_shutdown_timeout": 5,
        },
    )
    for i in range(2):
        cast(amqp, uid, "s.x", "hang", seconds=3600, i=i)
    wait_for(
        lambda: "2 handler threads stuck (max_stuck_threads = 1)" in d.log(),
        30,
        message=f"the recycle (log: {d.log_tail()})",
    )
    wait_for(
        lambda: len(instances(d)) == 1 and d.log().count("Consuming: ") >= 2,
        30,
        message=f"the fresh process consuming (log: {d.log_tail()})",
    )
    cast(amqp, uid, "s.x", "record", i=99)
    wait_for(lambda: records(d, method="record"), 20, message="served after the recycle")
    assert len(instances(d)) == 2 and d.alive()


# -- async def ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transport() -> Iterator[Any]:
    om.set_transport_defaults(control_exchange="openstack")
    if not cfg.CONF._args:  # the GLOBAL CONF, as oslo.messaging 18 requires
        cfg.CONF([], project="rpcworker-interop")
    t = om.get_rpc_transport(cfg.CONF, url=f"rabbit://guest:guest@{BROKER_HOST}:{BROKER_PORT}/")
    yield t
    t.cleanup()


def test_async_handlers_through_oslo_messaging_and_plain_amqp(
    workers: Workers, amqp: PikaClient, uid: str, transport: Any
) -> None:
    topic = f"async-{uid}"
    d = workers.start(
        {topic: {"type": "rpc", "handler": "misbehaving", "topic": topic, "handler_timeout": 1}}
    )
    try:
        client = om.get_rpc_client(transport, om.Target(topic=topic), timeout=15)
        assert client.call({}, "arecord", x=1) == {"x": 1}  # async
        assert client.call({}, "record", y=2) == {"y": 2}  # sync, same plugin
        client.cast({}, "arecord", z=3)
        wait_for(
            lambda: records(d, method="arecord", args={"z": 3}), 15, message="the async cast ran"
        )
        reply_q = amqp.reply_queue()
        amqp.publish(
            "openstack",
            topic,
            {"method": "arecord", "args": {"w": 4}},
            reply_to=reply_q,
            correlation_id="c-async",
        )
        [(props, body)] = amqp.wait_replies(1, 15)
        assert props.correlation_id == "c-async" and json.loads(body) == {"result": {"w": 4}}
        with pytest.raises(om.MessagingException) as info:  # past its deadline: cancelled
            client.call({}, "ahang", seconds=30)
        assert "HandlerTimeout" in str(type(info.value)) or "HandlerTimeout" in str(info.value)
        wait_for(
            lambda: records(d, kind="finally", method="ahang"),
            10,
            message="the cancelled coroutine's finally block ran",
        )
        assert "its task is cancelled" in d.log()
        assert "stuck past handler_timeout" not in d.log()  # no thread was lost
        assert client.call({}, "arecord", after=True) == {"after": True}
    finally:
        delete_queues(topic, f"{topic}.w1-{uid}")


def test_a_stop_during_a_recycle_stops_the_process(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """SIGTERM while a recycle waits for a handler: the process stops (exit 0), it does not
    re-execute itself."""
    d = workers.start(
        {"t": topic_binding(uid, "t")},
        default={"max_messages_per_worker": 1, "executor_thread_pool_size": 2},
    )
    cast(amqp, uid, "t.x", "slow", seconds=3)
    wait_for(lambda: records(d, kind="start", method="slow"), 15, message="slow started")
    cast(amqp, uid, "t.x", "record", i=1)  # the first message handled: the recycle is due
    d.wait_log("Recycling: consumers cancelled; waiting up to 10 s for 1 in-flight")
    d.signal(15)
    assert d.wait_exit(30) == 0
    assert d.log().count("rpcworker starting") == 1 and "rpcworker stopped" in d.log()
    assert records(d, method="slow", kind="rpc")  # the handler in flight was let finish
