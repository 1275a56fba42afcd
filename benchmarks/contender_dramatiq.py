"""A dramatiq actor that does nothing, for the drain benchmark.

The worker runs ``dramatiq benchmarks.contender_dramatiq --processes 1`` (its default
threads); queue and broker come from the environment (``RPCWORKER_BENCH_DRAMATIQ_QUEUE``,
``RPCWORKER_BENCH_URL``). The harness imports this module to send the messages.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from rpcworker_benchplugin.probe import PROBE

broker = RabbitmqBroker(
    url=os.environ.get("RPCWORKER_BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
)
dramatiq.set_broker(broker)


@dramatiq.actor(
    queue_name=os.environ.get("RPCWORKER_BENCH_DRAMATIQ_QUEUE", "rpcworker-bench-dramatiq"),
    max_retries=0,
)
def noop() -> None:
    PROBE.tick()
