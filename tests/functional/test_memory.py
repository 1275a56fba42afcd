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

from tests.functional.support import PikaClient, Workers, queue_drained, records
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
    return wait_for(lambda: children(pid) if len(children(pid)) >= processes else None, 30,
                    message=f"{processes} worker processes")


def flood(amqp: PikaClient, exchange: str, key: str, n: int, size: int) -> None:
    """``n`` casts of ``weigh`` with a blob of ``size`` bytes, transient, confirmed."""
    blob = "x" * size
    for i in range(n):
        body = json.dumps({"method": "weigh", "args": {"blob": blob, "i": i}}).encode()
        amqp.publish(exchange, key, body, delivery_mode=1)


def flood_peaks(workers: Workers, amqp: PikaClient, uid: str, processes: int,
                **default: Any) -> list[int]:
    """The scenario of issue 17: a topic binding with the shipped defaults, a backlog of
    N_FLOOD messages of 15 MB built while the worker is stopped (SIGSTOP, as a worker
    paused by an outage or a deploy), then the worker resumes. Every message must be
    handled once; returns each worker process's peak RSS above its idle RSS."""
    queue = f"flood-{uid}"
    d = workers.start({"flood": {"type": "topic", "handler": "recorder",
                                 "exchange": f"ex-{uid}", "queue": queue,
                                 "routing_key": "flood.#"}},
                      default={"workers": processes, **default}, recorder_delay=1.5)
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
    wait_for(lambda: len(records(d, method="weigh")) >= N_FLOOD, 180,
             message=f"{N_FLOOD} flood messages handled (log: {d.log_tail()})")
    wait_for(lambda: queue_drained(queue), 30, message=f"queue {queue} drained")
    done = records(d, method="weigh")
    assert sorted(r["args"]["i"] for r in done) == list(range(N_FLOOD))
    assert {r["size"] for r in done} == {BLOB}
    return [status(pid, "VmHWM") - idle[pid] for pid in pids]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_flood_of_large_messages_stays_under_the_bound(
        workers: Workers, amqp: PikaClient, uid: str, processes: int) -> None:
    """Shipped defaults (prefetch 64, 16 threads, max_message_size 16 MiB, the default
    max_inflight_bytes): every message is handled once, and each worker process's peak
    RSS stays under BOUND above its idle RSS."""
    peaks = flood_peaks(workers, amqp, uid, processes)
    print(f"peak RSS above idle, MiB: {[round(p / MiB) for p in peaks]}")
    assert all(p < BOUND for p in peaks), [round(p / MiB) for p in peaks]
