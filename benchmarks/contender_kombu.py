"""The bare kombu consumer: the ceiling of the client library rpcworker is built on.

``python -m benchmarks.contender_kombu URL QUEUE EXCHANGE KEY PREFETCH``: declares the queue
as rpcworker's ``direct`` binding does, consumes with basic.qos PREFETCH, and for each
message decodes the JSON body, ticks the probe and acks that one message. No thread pool,
no dispatcher, no replies: the least a consumer that acks after handling can do.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import kombu
from rpcworker_benchplugin.probe import PROBE


def main(argv: list[str]) -> int:
    url, queue_name, exchange_name, key, prefetch = argv
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exchange = kombu.Exchange(exchange_name, type="direct", durable=True)
    queue = kombu.Queue(queue_name, exchange, routing_key=key, durable=True)

    def on_message(message: Any) -> None:
        json.loads(message.body)
        PROBE.tick()
        message.ack()

    with kombu.Connection(url) as conn:
        channel = conn.channel()
        consumer = kombu.Consumer(
            channel,
            queues=[queue],
            on_message=on_message,
            prefetch_count=int(prefetch),
            accept=["json"],
        )
        with consumer:
            while not stopping:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
