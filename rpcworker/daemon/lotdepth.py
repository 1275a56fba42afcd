"""``rpcworker_parked_messages``: the depth of each binding's parking lot on ``/metrics``,
so that an alert can fire when messages are parked.

A prometheus_client collector in the process that serves the endpoint (the worker with
``workers = 1``, the supervisor otherwise). It reads the depths with a passive
``queue.declare`` on a connection of its own (never the consume loop's), at most once
every ``PROBE_EVERY`` seconds and only when scraped; between probes it serves the last
reading. The connection has no AMQP heartbeat (nothing would send one between scrapes):
a probe that fails drops it, and the next probe connects again. While the broker cannot
be asked, the metric has no samples (``rpcworker_connected`` says why).

Only lots named in the configuration (``dead_letter_queue``) are read: the queues bound
to a ``dead_letter_exchange`` are known only to the management API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import amqp.exceptions
import kombu
from oslo_config import cfg
from oslo_log import log as logging
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rpcworker.amqp import broker
from rpcworker.config.bindingconf import Binding
from rpcworker.errors import oneline
from rpcworker.parking.lots import lots_of

LOG = logging.getLogger(__name__)

NAME = "rpcworker_parked_messages"
#: seconds between two readings of the broker
PROBE_EVERY = 5.0


class ParkedDepth(Collector):
    """The collector; ``None`` from ``for_bindings`` when no binding has a lot."""

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        settings: broker.BrokerSettings,
        lots: dict[str, tuple[str, ...]],
        every: float = PROBE_EVERY,
    ) -> None:
        self.conf, self.settings, self.lots, self.every = conf, settings, lots, every
        self._lock = threading.Lock()
        self._conn: kombu.Connection | None = None
        self._at = -float("inf")
        self._depths: dict[str, int] = {}
        self._failing = False

    @classmethod
    def for_bindings(
        cls, conf: cfg.ConfigOpts, settings: broker.BrokerSettings, parsed: list[Binding]
    ) -> ParkedDepth | None:
        lots = lots_of(parsed)
        if not lots or settings.folder is not None:  # filesystem://: no queue depths
            return None
        return cls(conf, settings, lots)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if time.monotonic() - self._at >= self.every:
                self._probe()
            depths = dict(self._depths)
        family = GaugeMetricFamily(
            NAME,
            "Messages in the parking lot (dead_letter_queue) of the binding(s), read "
            f"from the broker at most every {self.every:g} s.",
            labels=["binding", "queue"],
        )
        for queue, depth in depths.items():
            family.add_metric([",".join(self.lots[queue]), queue], depth)
        yield family

    def _probe(self) -> None:
        self._at = time.monotonic()
        try:
            if self._conn is None:
                self._conn = broker.connection(self.conf, self.settings)
                self._conn.heartbeat = 0
                self._conn.ensure_connection(max_retries=1)
            self._depths = {q: self._depth(self._conn, q) for q in self.lots}
        except Exception as exc:
            self._depths = {}
            if self._conn is not None:
                self._conn.release()
                self._conn = None
            if not self._failing:
                LOG.warning(
                    "metrics: cannot read the parking lots' depth: %s (retried at the next scrape)",
                    oneline(exc),
                )
            self._failing = True
            return
        if self._failing:
            LOG.info("metrics: reading the parking lots' depth again")
        self._failing = False

    @staticmethod
    def _depth(conn: kombu.Connection, queue: str) -> int:
        """On a channel of its own (a 404 closes it): a lot not declared yet counts 0."""
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return 0
        finally:
            if channel.is_open:
                channel.close()
