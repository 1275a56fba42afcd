"""The Prometheus instruments of one process (``Metrics``): a ``Recorder`` of the engine
(a delivery received, settled, a binding consuming, the connection up or down, each
handler run), so the counters follow exactly what was carried out. Served by
``rpcworker.daemon.endpoints``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

from rpcworker.engine import recycling
from rpcworker.engine.events import SETTLEMENT, Recorder
from rpcworker.engine.shares import Load
from rpcworker.policy.outcomes import Action, Delivery, Outcome

PREFIX = "rpcworker_"


class _Children(dict[str, Any]):
    """binding name -> the labelled child of one metric, made on first use."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, binding: str) -> Any:
        child = self[binding] = self.metric.labels(binding=binding)
        return child


class Metrics(Recorder):
    """The instruments of one process. ``bindings``: names created at zero up front.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the values go to files the
    supervisor aggregates; gauges say how: ``livesum`` (in-flight, consuming: summed
    over the live workers) and ``livemin`` (connected: 1 only if every worker is).
    """

    def __init__(self, bindings: list[str], registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        by = ("binding",)

        def counter(name: str, doc: str) -> _Children:
            return _Children(prometheus_client.Counter(PREFIX + name, doc, by, registry=reg))

        self._received = counter("received", "Deliveries received.")
        self._acked = counter(
            "acked",
            "Deliveries acknowledged (basic.ack), including "
            "those acked once their retry or dead-letter copy was confirmed.",
        )
        self._rejected = counter("rejected", "Deliveries rejected (basic.reject).")
        self._retried = counter("retried", "Deliveries sent to a delay queue for a retry.")
        self._dead_lettered = counter(
            "dead_lettered",
            "Deliveries dead-lettered: copied to the parking lot, or rejected without one.",
        )
        self._failed = counter(
            "failed", "Handler runs that failed (raised, or no handle_message for an event)."
        )
        self._filtered = counter(
            "filtered",
            "Notifications acked without reaching the "
            "handler: the binding's filters did not match them.",
        )
        self._duration = _Children(
            prometheus_client.Histogram(
                PREFIX + "handler_duration_seconds", "Handler run time.", by, registry=reg
            )
        )
        self._inflight = _Children(
            prometheus_client.Gauge(
                PREFIX + "inflight",
                "Handlers running now.",
                by,
                registry=reg,
                multiprocess_mode="livesum",
            )
        )
        self._waiting = _Children(
            prometheus_client.Gauge(
                PREFIX + "waiting",
                "Deliveries received and waiting for a handler thread (their binding at its "
                "limit of threads, or every thread busy).",
                by,
                registry=reg,
                multiprocess_mode="livesum",
            )
        )
        self._thread_limit = _Children(
            prometheus_client.Gauge(
                PREFIX + "binding_thread_limit",
                "The most handler threads the binding's deliveries hold at once: its "
                "max_concurrency, or the fair default (workers > 1: summed over the workers).",
                by,
                registry=reg,
                multiprocess_mode="livesum",
            )
        )
        self._consuming = _Children(
            prometheus_client.Gauge(
                PREFIX + "binding_consuming",
                "1 while the binding has a consumer on the broker "
                "(workers > 1: the number of worker processes consuming it).",
                by,
                registry=reg,
                multiprocess_mode="livesum",
            )
        )
        self._reconnects = prometheus_client.Counter(
            PREFIX + "reconnects", "Connections to the broker made after the first.", registry=reg
        )
        self._connected = prometheus_client.Gauge(
            PREFIX + "connected",
            "1 while connected to the broker (workers > 1: 1 only if every worker process is).",
            registry=reg,
            multiprocess_mode="livemin",
        )
        self._connected.set(0)
        self._busy = prometheus_client.Gauge(
            PREFIX + "handler_threads_busy",
            "Handler threads in a handler now (stuck ones included).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._stuck = prometheus_client.Gauge(
            PREFIX + "handler_threads_stuck",
            "Handler threads stuck in a handler past its "
            "handler_timeout (each replaced by a fresh one).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._recycles = prometheus_client.Counter(
            PREFIX + "recycles",
            "Worker processes that recycled themselves (stuck threads, "
            "max_messages_per_worker, max_memory_per_worker).",
            registry=reg,
        )
        self._recycles.inc(recycling.recycles_so_far())  # those before a re-exec
        self._inflight_bytes = prometheus_client.Gauge(
            PREFIX + "inflight_bytes",
            "Bytes of message bodies received and not yet "
            "settled (counted against max_inflight_bytes).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._throttled = prometheus_client.Counter(
            PREFIX + "throttled_seconds",
            "Seconds spent throttled: consumers cancelled "
            "because max_inflight_bytes of bodies were in flight.",
            registry=reg,
        )
        self._throttled_so_far = 0.0
        for name in bindings:
            for children in (
                self._received,
                self._acked,
                self._rejected,
                self._retried,
                self._dead_lettered,
                self._failed,
                self._filtered,
                self._duration,
                self._inflight,
                self._waiting,
                self._thread_limit,
                self._consuming,
            ):
                children[name]  # noqa: B018  (creates the labelled child at zero)

    def received(self, binding: str) -> None:
        self._received[binding].inc()

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        binding = delivery.binding.name
        acked, rejected = SETTLEMENT[outcome.action]
        if acked:
            self._acked[binding].inc()
        if rejected:
            self._rejected[binding].inc()
        if outcome.action is Action.RETRY:
            self._retried[binding].inc()
        if outcome.dead_lettered:
            self._dead_lettered[binding].inc()
        if outcome.filtered:
            self._filtered[binding].inc()

    def consuming(self, binding: str, on: bool) -> None:
        self._consuming[binding].set(1 if on else 0)

    def connected(self, first: bool) -> None:
        self._connected.set(1)
        if not first:
            self._reconnects.inc()

    def disconnected(self) -> None:
        self._connected.set(0)
        for child in list(self._consuming.values()):
            child.set(0)

    def threads(self, busy: int, stuck: int) -> None:
        self._busy.set(busy)
        self._stuck.set(stuck)

    def inflight_bytes(self, held: int, throttled_seconds: float) -> None:
        self._inflight_bytes.set(held)
        if throttled_seconds > self._throttled_so_far:
            self._throttled.inc(throttled_seconds - self._throttled_so_far)
            self._throttled_so_far = throttled_seconds

    def recycled(self) -> None:
        self._recycles.inc()

    def loads(self, loads: Sequence[Load]) -> None:
        for x in loads:
            self._waiting[x.binding].set(x.waiting)
            self._thread_limit[x.binding].set(x.limit)

    def run_handler(self, binding: str, call: Callable[[], Outcome]) -> Outcome:
        """Run ``call`` (a handler thread): in-flight, duration, and a failure count
        when the outcome carries a failure reason."""
        inflight = self._inflight[binding]
        inflight.inc()
        started = time.perf_counter()
        try:
            outcome = call()
        finally:
            inflight.dec()
            self._duration[binding].observe(time.perf_counter() - started)
        if outcome is not None and outcome.reason is not None:
            self._failed[binding].inc()
        return outcome
