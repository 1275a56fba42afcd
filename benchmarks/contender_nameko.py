"""A nameko service with one no-op event handler, for the drain benchmark.

The worker runs ``nameko run benchmarks.contender_nameko:BenchService`` (its defaults:
``max_workers`` 10, hence prefetch 10; acks after the handler). The event source and
service names come from the environment (``RPCWORKER_BENCH_NAMEKO_SOURCE``,
``RPCWORKER_BENCH_NAMEKO_SERVICE``); the harness publishes the events itself, as nameko's
event dispatcher does (JSON body, routing key = the event type).
"""

from __future__ import annotations

import os
from typing import Any

from nameko.events import event_handler
from rpcworker_benchplugin.probe import PROBE

SOURCE = os.environ.get("RPCWORKER_BENCH_NAMEKO_SOURCE", "rpcworker-bench-source")
EVENT = "bench"


class BenchService:
    name = os.environ.get("RPCWORKER_BENCH_NAMEKO_SERVICE", "rpcworker_bench")

    @event_handler(SOURCE, EVENT)
    def noop(self, payload: Any) -> None:
        PROBE.tick()
