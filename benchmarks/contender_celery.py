"""A Celery app with one no-op task, for the drain benchmark.

The worker runs ``celery -A benchmarks.contender_celery worker -P solo -c 1`` with
``task_acks_late`` and ``worker_prefetch_multiplier = 100`` (prefetch 100); the queue and
broker come from the environment (``RPCWORKER_BENCH_CELERY_QUEUE``, ``RPCWORKER_BENCH_URL``).
The harness builds the same app with ``make_app()`` to send the tasks.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from rpcworker_benchplugin.probe import PROBE

TASK = "rpcworker_bench.noop"


def make_app(url: str, queue: str) -> Celery:
    app = Celery("rpcworker_bench", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_acks_late=True,
        worker_prefetch_multiplier=100,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=TASK, shared=False)
    def noop(**kwargs: Any) -> dict[str, Any]:
        PROBE.tick()
        return kwargs

    return app


app = make_app(
    os.environ.get("RPCWORKER_BENCH_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("RPCWORKER_BENCH_CELERY_QUEUE", "rpcworker-bench-celery"),
)
