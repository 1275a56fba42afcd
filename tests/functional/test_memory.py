"""Memory that stays bounded under large messages (``max_inflight_bytes``), on the real
daemon and broker: a backlog of messages near ``max_message_size`` with the shipped
defaults, peak RSS read from ``/proc/PID/status``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.functional.support import (
    PikaClient,
    Workers,
    broker_stopped,
    free_port,
    queue_drained,
    queue_info,
    rabbitmqctl,
    records,
    scrape,
)
from tests.helpers import wait_for

MiB = 1024 * 1024
#: the documented bound (doc/source/performance.md): a worker with the shipped settings,
#: flooded with messages near max_message_size, stays this far above its idle RSS
BOUND = 512 * MiB
N_FLOOD = 80
BLOB = 15_000_000  # bytes of a flood message's blob: near the 16 MiB max_message_size


def status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def worker_pids(pid: int, processes: int) -> list[int]:
    """The consuming processes: the daemon itself, or its worker children."""
    if processes == 1:
        return [pid]
    return wait_for(
        lambda: children(pid) if len(children(pid)) >= processes else None,
        30,
        message=f"{processes} worker processes",
    )


def flood(amqp: PikaClient, exchange: str, key: str, n: int, size: int) -> None:
    """``n`` casts of ``weigh`` with a blob of ``size`` bytes, transient, confirmed."""
    blob = "x" * size
    for i in range(n):
        body = json.dumps({"method": "weigh", "args": {"blob": blob, "i": i}}).encode()
        amqp.publish(exchange, key, body, delivery_mode=1)


def flood_peaks(
    workers: Workers, amqp: PikaClient, uid: str, processes: int, **default: Any
) -> list[int]:
    """The scenario of issue 17: a topic binding with the shipped defaults, a backlog of
    N_FLOOD messages of 15 MB built while the worker is stopped (SIGSTOP, as a worker
    paused by an outage or a deploy), then the worker resumes. Every message must be
    handled once; returns each worker process's peak RSS above its idle RSS."""
    queue = f"flood-{uid}"
    d = workers.start(
        {
            "flood": {
                "type": "topic",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": queue,
                "routing_key": "flood.#",
            }
        },
        default={"workers": processes, **default},
        recorder_delay=1.5,
    )
    assert d.proc is not None
    pids = worker_pids(d.proc.pid, processes)
    wait_for(lambda: "READY" in d.log() or "consuming" in d.log().lower(), 30)
    idle = {pid: status(pid, "VmRSS") for pid in pids}
    for pid in [d.proc.pid, *pids]:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        flood(amqp, f"ex-{uid}", "flood.x", N_FLOOD, BLOB)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: len(records(d, method="weigh")) >= N_FLOOD,
        180,
        message=f"{N_FLOOD} flood messages handled (log: {d.log_tail()})",
    )
    wait_for(lambda: queue_drained(queue), 30, message=f"queue {queue} drained")
    done = records(d, method="weigh")
    assert sorted(r["args"]["i"] for r in done) == list(range(N_FLOOD))
    assert {r["size"] for r in done} == {BLOB}
    return [status(pid, "VmHWM") - idle[pid] for pid in pids]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_flood_of_large_messages_stays_under_the_bound(
    workers: Workers, amqp: PikaClient, uid: str, processes: int
) -> None:
    """Shipped defaults (prefetch 64, 16 threads, max_message_size 16 MiB, the default
    max_inflight_bytes): every message is handled once, and each worker process's peak
    RSS stays under BOUND above its idle RSS."""
    peaks = flood_peaks(workers, amqp, uid, processes)
    print(f"peak RSS above idle, MiB: {[round(p / MiB) for p in peaks]}")
    assert all(p < BOUND for p in peaks), [round(p / MiB) for p in peaks]


def prefetch_of(queue: str) -> list[int]:
    """The prefetch window of each consumer of ``queue``, as the broker has it."""
    out = rabbitmqctl(
        "list_consumers", "-q", "--formatter", "json", "queue_name", "prefetch_count", timeout=30
    ).stdout
    return [int(c["prefetch_count"]) for c in json.loads(out or "[]") if c["queue_name"] == queue]


def casts(amqp: PikaClient, exchange: str, start: int, n: int, size: int) -> None:
    """Persistent ``weigh`` casts i = start .. start + n - 1 with a blob of ``size``."""
    blob = "x" * size
    for i in range(start, start + n):
        amqp.publish(
            exchange, "b.x", {"method": "weigh", "args": {"blob": blob, "i": i}}, delivery_mode=2
        )


def handled(d: Any) -> set[int]:
    return {r["args"]["i"] for r in records(d, method="weigh")}


def test_windows_follow_the_size_and_a_broker_restart_while_throttled_loses_nothing(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    """Budget 4 MiB, max_message_size 1 MiB: the consumer starts with a window of 4 (the
    largest message assumed), widens to prefetch_count 64 once small casts are seen, and a
    burst of 40 casts of 900 kB then overruns it: the worker throttles. RabbitMQ restarts
    while it is throttled: every cast is handled (at least once), the queue is drained, the
    throttle ended with the connection, and after reconnecting the window (4 again: the
    largest message assumed, then 900 kB seen) comes back to 64 with small casts. The
    handler is held (``hold_while``) from the burst until the connection is lost."""
    queue, exchange = f"budget-{uid}", f"ex-{uid}"
    hold = tmp_path / "hold"
    d = workers.start(
        {
            "b": {
                "type": "topic",
                "handler": "recorder",
                "exchange": exchange,
                "queue": queue,
                "routing_key": "b.#",
            }
        },
        default={"max_message_size": MiB, "max_inflight_bytes": 4 * MiB},
        recorder={"hold_while": hold},
    )
    wait_for(lambda: prefetch_of(queue) == [4], 30, message="a window of 4 at start")
    casts(amqp, exchange, 0, 20, 0)
    wait_for(lambda: handled(d) >= set(range(20)), 30, message="20 small casts handled")
    wait_for(lambda: prefetch_of(queue) == [64], 30, message="the window widened to 64")
    hold.write_text("")
    casts(amqp, exchange, 20, 40, 900_000)
    d.wait_log("Throttling: ", 30)
    with broker_stopped():
        d.wait_log("(the connection was lost)", 60)
    hold.unlink()
    wait_for(
        lambda: handled(d) >= set(range(60)),
        120,
        message=f"all 60 casts handled (log: {d.log_tail()})",
    )
    wait_for(lambda: queue_drained(queue), 60, message=f"queue {queue} drained")
    assert d.log().count("Connected to the broker") >= 2
    client = PikaClient()  # the test's own connection went with the broker
    try:
        # the burst's 900 kB bodies are forgotten two generations of the size estimate
        # (5 to 10 s) after the last one, while small casts keep coming
        sent = 60

        def widened() -> bool:
            nonlocal sent
            casts(client, exchange, sent, 2, 0)
            sent += 2
            return prefetch_of(queue) == [64]

        wait_for(
            widened,
            60,
            interval=0.5,
            message=f"the window back to 64 after reconnecting: {prefetch_of(queue)}",
        )
    finally:
        client.close()
    wait_for(lambda: handled(d) >= set(range(sent)), 30, message="the small casts handled")
    assert d.alive()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_throttling_keeps_what_was_delivered_and_redelivers_nothing(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path, queue_type: str
) -> None:
    """The pause is basic.cancel: on a classic and on a quorum queue the deliveries the
    worker holds stay unacked on its channel while it takes nothing more, and are acked
    once handled. Every cast is handled exactly once (a redelivery would be recorded
    twice: casts carry no id to suppress it), and the metrics show the bytes in flight
    and the time throttled."""
    queue, exchange, hold = f"pause-{uid}", f"ex-{uid}", tmp_path / "hold"
    port = free_port()
    d = workers.start(
        {
            "p": {
                "type": "topic",
                "handler": "recorder",
                "exchange": exchange,
                "queue": queue,
                "routing_key": "b.#",
                "queue_type": queue_type,
            }
        },
        default={"max_message_size": MiB, "max_inflight_bytes": 4 * MiB},
        recorder={"hold_while": hold},
        extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n",
    )
    casts(amqp, exchange, 0, 4, 0)  # the window widens to 64 with small casts
    wait_for(lambda: prefetch_of(queue) == [64], 30, message="the window widened to 64")
    hold.write_text("")
    casts(amqp, exchange, 4, 30, 900_000)
    d.wait_log("Throttling: ", 30)
    wait_for(lambda: prefetch_of(queue) == [], 10, message="the consumer cancelled")
    taken = wait_for(lambda: (q := queue_info(queue)) and q["messages_unacknowledged"], 10)
    # the bodies of the deliveries held: at least three of the 900,000-byte casts (the
    # pause comes at 4 MiB; one CI run on RabbitMQ 4.3.6 logged the pause at 3.4 MiB, a
    # race not reproduced in 9 runs since, noted in issue 24's closing note)
    wait_for(
        lambda: scrape(port)[("rpcworker_inflight_bytes", "")] >= 3 * 900_000,
        10,
        message="the in-flight bytes on /metrics",
    )
    q = queue_info(queue)
    assert q is not None and q["messages_unacknowledged"] == taken
    assert q["messages_ready"] == 30 - taken > 0  # the rest waits in the queue
    hold.unlink()
    wait_for(lambda: len(records(d, method="weigh")) >= 34, 60, message="34 casts handled")
    wait_for(lambda: queue_drained(queue), 30, message=f"queue {queue} drained")
    done = sorted(r["args"]["i"] for r in records(d, method="weigh"))
    assert done == list(range(34))  # each exactly once
    d.wait_log("Throttling over after", 30)
    m = wait_for(lambda: (s := scrape(port))[("rpcworker_inflight_bytes", "")] == 0 and s, 10)
    assert m[("rpcworker_throttled_seconds_total", "")] > 0


def test_a_budget_smaller_than_max_message_size_exits_2_naming_both(daemon_factory: Any) -> None:
    from tests.functional.conftest import broker_section

    d = daemon_factory(
        "[DEFAULT]\nbindings = b\nmax_inflight_bytes = 1048576\n"
        f"max_message_size = 2097152\n{broker_section()}\n"
        "[binding:b]\ntype = direct\nhandler = recorder\nexchange = x\n"
        "queue = q\nrouting_key = k\n"
    )
    assert d.wait_exit(30) == 2
    assert "max_inflight_bytes" in d.log() and "max_message_size" in d.log()
