"""The bare py-amqp consumer: the ceiling of the AMQP client under kombu, with no kombu.

``python -m benchmarks.contender_pyamqp URL QUEUE EXCHANGE KEY PREFETCH``: connects with
``amqp.Connection`` straight (the URL's host, port, user, password and virtual host),
declares the queue as rpcworker's ``direct`` binding (and the bare kombu consumer) do,
consumes with basic.qos PREFETCH, and for each message decodes the JSON body, ticks the
probe and acks that one message. No kombu, no thread pool, no dispatcher, no replies.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
from rpcworker_benchplugin.probe import PROBE


def connect(url: str) -> amqp.Connection:
    """An open ``amqp.Connection`` to ``url`` (``amqp://user:password@host:port/vhost``;
    an empty vhost, or kombu's ``//``, is ``/``)."""
    parts = urlsplit(url)
    conn = amqp.Connection(
        host=f"{parts.hostname or 'localhost'}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
        connect_timeout=10,
    )
    conn.connect()
    return conn


def declare(channel: Any, queue: str, exchange: str, key: str) -> None:
    """What ``kombu.Queue(queue, Exchange(exchange, "direct", durable=True), routing_key=key,
    durable=True).declare()`` sends: the same flags, so the harness's declare matches."""
    channel.exchange_declare(exchange, "direct", durable=True, auto_delete=False)
    channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
    channel.queue_bind(queue, exchange, key)


def main(argv: list[str]) -> int:
    url, queue, exchange, key, prefetch = argv
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    conn = connect(url)
    try:
        channel = conn.channel()
        channel.basic_qos(0, int(prefetch), False)
        declare(channel, queue, exchange, key)

        def on_message(msg: amqp.Message) -> None:
            json.loads(msg.body)
            PROBE.tick()
            channel.basic_ack(msg.delivery_tag)

        channel.basic_consume(queue, callback=on_message)
        while not stopping:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
