"""A paced stream of persistent, publisher-confirmed casts that loses nothing itself
(tests/functional/test_faults.py, tests/cluster)."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pika

from tests.functional.conftest import BROKER_HOST, BROKER_PORT

#: ids per stream, publishing rate (messages/s) and the longest a stream may take
COUNT = 2000
RATE = 400.0
STREAM_TIMEOUT = 90.0


class Stream(threading.Thread):
    """Publish ids 0..count-1 as persistent, confirmed casts, about ``rate`` per second.

    ``basic_publish`` on a channel in confirm mode returns once the broker has
    confirmed the message (persistent, on a durable queue: it is on disk). Anything
    else (connection lost, broker down, nack, unroutable) means "not confirmed": the
    same id is sent again on a new connection until it is confirmed. A publish that
    failed may still have reached the queue, so each one can add a duplicate.
    """

    RETRY = 0.2  # between two attempts to reconnect and re-send

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        count: int = COUNT,
        rate: float = RATE,
        timeout: float = STREAM_TIMEOUT,
        host: str = BROKER_HOST,
        port: int = BROKER_PORT,
        body: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(name="fault-stream", daemon=True)
        #: the body of id i (default: a cast of `record` with {"id": i})
        self.body = body or (lambda i: json.dumps({"method": "record", "args": {"id": i}}).encode())
        self.host, self.port = host, port
        self.exchange = exchange
        self.routing_key = routing_key
        self.count = count
        self.rate = rate
        self.timeout = timeout
        self.confirmed = 0  #: ids 0..confirmed-1 are confirmed
        self.unconfirmed = 0  #: publishes that raised (each re-sent; each may duplicate)
        self.connect_failures = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self._halt = threading.Event()
        self._conn: pika.BlockingConnection | None = None

    def halt(self) -> None:
        self._halt.set()

    def done(self) -> bool:
        return not self.is_alive()

    def _channel(self) -> Any:
        self._conn = pika.BlockingConnection(
            pika.ConnectionParameters(
                host=self.host,
                port=self.port,
                credentials=pika.PlainCredentials("guest", "guest"),
                connection_attempts=1,
                socket_timeout=5,
                blocked_connection_timeout=30,
            )
        )
        channel = self._conn.channel()
        channel.confirm_delivery()
        return channel

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def run(self) -> None:
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        start = due = time.monotonic()
        channel = None
        try:
            i = 0
            while i < self.count and not self._halt.is_set():
                now = time.monotonic()
                if now - start > self.timeout:
                    raise TimeoutError(
                        f"{self.confirmed} of {self.count} ids confirmed after {self.timeout} s"
                    )
                # pacing, without a catch-up burst after an outage
                due = max(due, now - 1 / self.rate)
                if due > now and self._halt.wait(due - now):
                    break
                if channel is None:
                    try:
                        channel = self._channel()
                    except Exception as exc:
                        self.connect_failures += 1
                        self.failures[type(exc).__name__] += 1
                        self._drop()
                        self._halt.wait(self.RETRY)
                        continue
                body = self.body(i)
                try:
                    channel.basic_publish(
                        self.exchange, self.routing_key, body, props, mandatory=True
                    )
                except Exception as exc:  # not confirmed: re-send it
                    self.unconfirmed += 1
                    self.failures[type(exc).__name__] += 1
                    channel = None
                    self._drop()
                    self._halt.wait(self.RETRY)
                    continue
                i += 1
                self.confirmed = i
                due += 1 / self.rate
        except BaseException as exc:
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - start
            self._drop()

    def describe(self) -> str:
        text = f"{self.unconfirmed} publishes re-sent"
        if self.failures:
            text += " [" + ", ".join(f"{k} x{v}" for k, v in sorted(self.failures.items())) + "]"
        return text
