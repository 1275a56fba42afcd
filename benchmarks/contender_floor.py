"""The floor of call latency on this stack: an oslo-compatible responder that answers
inline in the kombu callback (no thread hand-off, no decoding beyond the envelope,
nothing else). ``python -m benchmarks.contender_floor KOMBU_URL EXCHANGE TOPIC``.

Calls from the same oslo.messaging client to this responder show how much of the
round trip belongs to the client and the broker, whatever the server does.
"""

from __future__ import annotations

import json
import signal
import sys
import uuid
from typing import Any

import amqp
import kombu


def main(argv: list[str]) -> int:
    url, exchange_name, topic = argv
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        exchange = kombu.Exchange(exchange_name, type="topic", durable=False)
        queue = kombu.Queue(topic, exchange, routing_key=topic, durable=False)

        def on_message(message: Any) -> None:
            inner = json.loads(json.loads(message.body)["oslo.message"])
            body = json.dumps(
                {
                    "oslo.version": "2.0",
                    "oslo.message": json.dumps(
                        {
                            "result": inner.get("args"),
                            "failure": None,
                            "ending": True,
                            "_msg_id": inner["_msg_id"],
                            "_unique_id": uuid.uuid4().hex,
                        }
                    ),
                }
            ).encode()
            channel.basic_publish(
                amqp.Message(body, content_type="application/json", content_encoding="utf-8"),
                exchange="",
                routing_key=inner["_reply_q"],
            )
            message.ack()

        with kombu.Consumer(channel, queues=[queue], on_message=on_message, prefetch_count=64):
            while not stop:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
