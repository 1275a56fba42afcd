"""What the worker consumes on the current connection: each binding on its own channel
(its own prefetch window), one kombu ``Consumer`` per queue, so that a delivery's queue
is known from the consumer that received it.

A declaration the broker refuses (406 PRECONDITION_FAILED, 405 RESOURCE_LOCKED, ...)
closes only that binding's channel: it is logged in one line, the other bindings go on,
and it is tried again every ``reconnect_interval_max`` seconds. One that uses a
deprecated feature the broker denies (541, which closes the connection) cannot succeed
later: it raises ``deprecations.Refused``, a ConfigError (exit status 2). On SIGHUP a removed or
changed binding stops taking deliveries (basic.cancel) but keeps its channel until its
in-flight messages are settled, so nothing is lost or handled twice; a new or changed
binding is declared and consumed at once (``engine.rebinding``). Loop thread only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import kombu
from oslo_log import log as logging

from rpcworker.amqp import deprecations, topology
from rpcworker.amqp.topology import Topology
from rpcworker.amqp.transport import Capabilities, prepare_consuming_channel
from rpcworker.config.bindingconf import Binding
from rpcworker.engine.budget import MAX_WINDOW
from rpcworker.engine.events import Listener
from rpcworker.engine.streams import OFFSET_HEADER, Streams
from rpcworker.errors import oneline

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Subscription:
    """One queue consumed for one binding."""

    binding: Binding
    handler: Any
    queue: str
    #: the queue has delay queues declared (a failure can be retried)
    retryable: bool


@dataclasses.dataclass(eq=False)
class Bound:
    """A binding's channel and consumers on the current connection."""

    topology: Topology
    channel: Any
    consumers: list[kombu.Consumer]
    #: its consumers are cancelled by the throttle (``pause``)
    paused: bool = False

    def pausable(self) -> list[kombu.Consumer]:
        return [c for c in self.consumers if _pausable(c)]

    def pause(self) -> int:
        """basic.cancel on the consumers that may be; how many."""
        pausable = self.pausable()
        for consumer in pausable:
            consumer.cancel()
        self.paused = True
        return len(pausable)

    def restart(self, window: int | None, streams: Streams) -> None:
        """basic.qos (it applies to the consumers created after it), then consume."""
        pausable = self.pausable()
        self.paused = False
        if not pausable:
            return
        pausable[0].qos(prefetch_count=window or 0)
        for consumer in pausable:
            consumer.prefetch_count = window
            start(consumer, streams)


def start(consumer: kombu.Consumer, streams: Streams) -> None:
    """basic.consume; a stream's consumer from where this process reads it."""
    for queue in consumer.queues or ():
        cursor = streams.cursors.get(queue.name)
        if cursor is not None:
            queue.consumer_arguments = {OFFSET_HEADER: cursor.offset()}
    consumer.consume()


def _pausable(consumer: kombu.Consumer) -> bool:
    """Whether the throttle may cancel ``consumer`` and start it again: not on an
    auto_delete queue (the broker deletes it when its last consumer goes)."""
    return not any(q.auto_delete for q in consumer.queues or ())


def _no_budget(prefetch: int, consumers: int) -> int | None:
    return prefetch or None


class Subscriptions:
    def __init__(
        self,
        topologies: Sequence[Topology],
        handlers: dict[str, Any],
        on_message: Callable[[Subscription, Any], None],
        events: Listener,
        retry_interval: float,
        window: Callable[[int, int], int | None] = _no_budget,
        streams: Streams | None = None,
        on_stream_message: Callable[[Subscription, Any], None] | None = None,
    ) -> None:
        self.topologies = list(topologies)
        #: the window for a binding's consumers: (its prefetch_count, consumers in all)
        self._window = window
        #: where each stream (rabbit_stream_fanout) is read from
        self.streams = streams or Streams()
        self._on_stream_message = on_stream_message or on_message
        #: the throttle has cancelled the consumers (``pause``): new ones wait too
        self.paused = False
        self.handlers = handlers
        self._on_message = on_message
        self._events = events
        self._retry_interval = retry_interval
        self._conn: kombu.Connection | None = None
        self._caps: Capabilities | None = None
        self._bound: dict[str, Bound] = {}
        self._failed: dict[str, float] = {}  # binding name -> next declaration attempt
        #: the queue being declared (named by a refusal)
        self._declaring = ""

    @property
    def consuming(self) -> list[Topology]:
        return [t for t in self.topologies if t.binding.name in self._bound]

    @property
    def failed(self) -> list[str]:
        return sorted(self._failed)

    def log_consuming(self) -> None:
        if self.consuming:
            LOG.info(
                "Consuming: %s",
                "; ".join(
                    f"{t.binding.name} <- {', '.join(q.name for q in t.queues)}"
                    for t in self.consuming
                ),
            )

    def status(self, reconnects: int) -> str:
        """The systemd STATUS line: what is consumed, and what could not be declared."""
        line = (
            f"consuming {len(self.consuming)} of {len(self.topologies)} binding(s); "
            f"{reconnects} reconnect(s)"
        )
        if self._failed:
            line += f"; not declared: {', '.join(self.failed)}"
        return line

    def consumers(self) -> list[kombu.Consumer]:
        return [c for bound in self._bound.values() for c in bound.consumers]

    # -- a session ------------------------------------------------------------------------

    def start(self, conn: kombu.Connection, caps: Capabilities) -> list[kombu.Consumer]:
        """Declare and consume every binding on a new connection."""
        self.lost()
        self._conn, self._caps = conn, caps
        for topo in self.topologies:
            self.declare(topo)
        return self.consumers()

    def lost(self) -> None:
        """The connection is gone, and its channels with it."""
        self._conn = self._caps = None
        self._bound, self._failed = {}, {}
        self.paused = False

    @property
    def connection(self) -> kombu.Connection:
        """The current connection (loop thread, while connected)."""
        assert self._conn is not None
        return self._conn

    def withdraw(self, name: str) -> Bound | None:
        """Stop consuming binding ``name`` (basic.cancel) and forget it; its channel
        stays open, with its unacked deliveries, in the ``Bound`` returned (None: it
        was not consumed)."""
        self._failed.pop(name, None)
        bound = self._bound.pop(name, None)
        if bound is None:
            return None
        self._events.consuming(name, False)
        with contextlib.suppress(*tuple(self.connection.channel_errors)):
            for consumer in bound.consumers:
                consumer.cancel()
        return bound

    def declare(self, topo: Topology) -> None:
        """Declare ``topo`` and consume it on the current connection (a refusal is logged
        and retried later, see ``retry_failed``)."""
        b = topo.binding
        assert self._conn is not None and self._caps is not None
        channel = self._conn.channel()
        prepare_consuming_channel(channel)
        try:
            consumers = self._declare_on(channel, topo, self._caps)
        except deprecations.RefusalError as exc:
            feature = deprecations.refused_feature(exc)
            if feature is None:
                raise
            raise deprecations.Refused(b, self._declaring, feature) from None
        except tuple(self._conn.channel_errors) as exc:
            self._failed[b.name] = time.monotonic() + self._retry_interval
            LOG.error(
                "binding %s: the broker refused its declarations: %s; the other "
                "bindings go on, this one is tried again in %g s",
                b.name,
                oneline(exc),
                self._retry_interval,
            )
            with contextlib.suppress(Exception):
                channel.close()
            return
        self._failed.pop(b.name, None)
        bound = self._bound[b.name] = Bound(topo, channel, consumers)
        bound.paused = self.paused  # then _declare left its pausable consumers idle
        self._events.consuming(b.name, True)

    def _declare_on(self, channel: Any, topo: Topology, caps: Capabilities) -> list[kombu.Consumer]:
        """Delay queues, parking lot, then the queues (each with its own consumer);
        consuming starts once all are declared."""
        b = topo.binding
        handler = self.handlers[b.handler]
        delays = {
            q.name: topology.retry_queues(b, q) if caps.delay_queues else [] for q in topo.queues
        }
        for queue in topo.queues:
            for delay_queue in delays[queue.name]:
                self._declaring = delay_queue.name
                delay_queue(channel).declare()
        exchange, parking = topology.parking_lot(b)
        if exchange is not None:
            exchange(channel).declare()
        if parking is not None:
            self._declaring = parking.name
            parking(channel).declare()
        consumers = []
        for queue in topo.queues:
            self._declaring = queue.name
            sub = Subscription(b, handler, queue.name, bool(delays[queue.name]))
            on_message: Callable[[Any], None] = functools.partial(self._on_message, sub)
            if topology.is_stream(queue):
                self.streams.add(queue.name)
                on_message = functools.partial(self._on_stream_message, sub)
            consumers.append(
                kombu.Consumer(
                    channel,
                    queues=[queue],
                    no_ack=False,
                    auto_declare=True,
                    on_message=on_message,
                    prefetch_count=self._window_of(b),
                    tag_prefix=f"rpcworker-{b.name}-",
                )
            )  # kombu numbers tags process-wide
        for consumer in consumers:
            if not (self.paused and _pausable(consumer)):  # throttled: resume() starts it
                start(consumer, self.streams)
        return consumers

    def retry_failed(self, now: float) -> bool:
        """Declare again the bindings whose retry is due; whether any was tried."""
        due = [t for t in self.topologies if self._failed.get(t.binding.name, now + 1) <= now]
        for topo in due:
            self.declare(topo)
        return bool(due)

    def cancel(self) -> None:
        """Stop taking deliveries (a stop): basic.cancel on every queue."""
        for consumer in self.consumers():
            consumer.cancel()

    # -- the byte budget (consumer.budget.Throttle) ---------------------------------------

    def _window_of(self, b: Binding) -> int | None:
        return self._window(b.prefetch_count, sum(len(t.queues) for t in self.topologies))

    def pause(self) -> int:
        """Cancel every consumer that may be (``Bound.pausable``); how many were. The
        deliveries they had stay unacked on their channels, to be settled as usual."""
        self.paused = True
        return sum(bound.pause() for bound in self._bound.values())

    def resume(self) -> None:
        """Consume again, each binding with its window for the recent size."""
        self.paused = False
        for bound in self._bound.values():
            if bound.paused:
                bound.restart(self._window_of(bound.topology.binding), self.streams)

    def slots(self) -> int:
        """Deliveries the windows ``resume`` gives would take in all."""
        return sum(
            (self._window_of(bound.topology.binding) or 0) * len(bound.pausable())
            for bound in self._bound.values()
        )

    def rewindow(self) -> int:
        """Start again (cancel, qos, consume) the bindings whose window is off from the
        one the budget gives now by a factor of two; how many did."""
        if self.paused:
            return 0
        changed = 0
        for bound in self._bound.values():
            pausable = bound.pausable()
            if not pausable:
                continue
            # the window its consumers started with (restart sets it on each of them)
            now = pausable[0].prefetch_count or MAX_WINDOW
            want = self._window_of(bound.topology.binding)
            target = want or MAX_WINDOW
            if target * 2 <= now or target >= 2 * now:
                bound.pause()
                bound.restart(want, self.streams)
                changed += 1
        return changed

    def delete_transient(self, channel: Any) -> None:
        """Clean stop: delete this process's per-process queues (as oslo.messaging does)."""
        for topo in self.topologies:
            for name in topo.transient:
                try:
                    channel.queue_delete(name)
                except Exception as exc:  # best effort: x-expires removes it anyway
                    LOG.debug("could not delete queue %s: %s", name, exc)

    def queues_empty(self) -> bool:
        """Whether every queue consumed has no message ready (a passive declare each)."""
        if self._conn is None:
            return False
        channel = self._conn.default_channel
        return not any(
            channel.queue_declare(queue=q.name, passive=True)[1]
            for t in self.consuming
            for q in t.queues
        )
