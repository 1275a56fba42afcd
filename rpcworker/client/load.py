"""``--count N [--concurrency C]``: N requests over C connections (one thread each),
then one JSON summary line."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from oslo_config import cfg

from rpcworker.amqp import broker
from rpcworker.client.commands import Caller, caster
from rpcworker.client.connect import Session, broker_errors, connect
from rpcworker.client.exits import EXIT_OK, PROG, ClientError, RemoteCallError
from rpcworker.client.request import rpc_request


@dataclasses.dataclass
class LoadRun:
    """Shared by the sender threads of one ``--count`` run."""

    count: int
    tickets: Iterator[int] = dataclasses.field(default_factory=itertools.count)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    first_error: ClientError | None = None

    def take(self) -> bool:
        """Whether one more request is to be sent (by the calling thread)."""
        with self.lock:
            return not self.stop.is_set() and next(self.tickets) < self.count

    def failed(self, exc: ClientError) -> None:
        with self.lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = exc


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(len(sorted_values) * fraction)) - 1]


def _load_worker(session: Session, ns: argparse.Namespace, state: LoadRun) -> None:
    """One thread: requests on its own connection until the tickets run out."""
    try:
        if ns.command == "call":
            caller = Caller(session, rpc_request(ns), ns)
            while state.take():
                start = time.monotonic()
                with state.lock:
                    state.sent += 1
                try:
                    waiter = caller.call()
                except ClientError as exc:  # timeout: the next call goes on
                    state.failed(exc)
                    continue
                if waiter.failure is not None:
                    state.failed(RemoteCallError(waiter.failure))
                else:
                    with state.lock:
                        state.ok += 1
                        state.latencies.append(time.monotonic() - start)
        else:
            send = caster(session, ns)
            while state.take():
                with state.lock:
                    state.sent += 1
                send()
                with state.lock:
                    state.ok += 1
    except broker_errors(session.conn) as exc:  # this connection is done for
        state.failed(session.broker_error(f"running {ns.command}", exc))
    except ClientError as exc:
        state.failed(exc)


def run_load(conf: cfg.ConfigOpts, settings: broker.BrokerSettings, ns: argparse.Namespace) -> int:
    """``--count N --concurrency C``: N requests over C connections; a JSON summary."""
    count: int = ns.count
    sessions: list[Session] = []
    try:
        for _ in range(min(ns.concurrency or 1, count)):
            sessions.append(connect(conf, settings))
        state = LoadRun(count)
        threads = [
            threading.Thread(
                target=_load_worker, args=(s, ns, state), daemon=True, name=f"{PROG}-{i}"
            )
            for i, s in enumerate(sessions)
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            state.stop.set()
            raise
        elapsed = time.monotonic() - start
    finally:
        for s in sessions:
            s.conn.release()
    summary: dict[str, Any] = {
        "command": ns.command,
        "count": count,
        "concurrency": len(sessions),
        "sent": state.sent,
        "ok": state.ok,
        "errors": state.errors,
        "elapsed": round(elapsed, 6),
        "rate": round(state.sent / elapsed, 3) if elapsed > 0 else None,
    }
    if ns.command == "call":
        latencies = sorted(state.latencies)
        for name, fraction in (("p50", 0.5), ("p95", 0.95)):
            value = _percentile(latencies, fraction)
            summary[name] = None if value is None else round(value, 6)
    print(json.dumps(summary), flush=True)
    if state.first_error is not None:
        raise LoadError(state.first_error, state.errors, count)
    return EXIT_OK


class LoadError(ClientError):
    """Some requests of a ``--count`` run failed: the exit status of the first failure."""

    def __init__(self, first: ClientError, errors: int, count: int) -> None:
        super().__init__(
            first.status, f"{errors} of {count} requests failed; the first: {first}", first.type
        )
        self.first, self.errors = first, errors

    def as_json(self) -> dict[str, Any]:
        return {**self.first.as_json(), "errors": self.errors}
