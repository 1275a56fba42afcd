"""The kombu ``ConsumerMixin`` of one worker process, and its lifecycle.

kombu's template runs the session: ``create_connection`` / ``establish_connection``
(failover, backoff), ``on_connection_revived``, ``get_consumers`` (the subscriptions),
``on_consume_ready`` (READY=1), ``on_iteration`` (everything that is not I/O, once per
turn), ``should_stop``, ``on_consume_end`` (a clean stop). Only the thread running
``run()`` touches kombu objects; handlers run in the executor's threads and their
outcomes come back through its wake-up pipe.

It fills kombu's hooks and replaces four of its methods, each with the reason in its
docstring: ``run()`` (restart pacing, one line per loss), ``consume()`` (select() on the
socket and the wake-up pipe instead of ``drain_events(timeout=1)``),
``establish_connection()`` (a stop ends the retries; a broken link is dropped without
waiting for connection.close) and ``create_connection()`` (the next failover host).

A delivery's path, top to bottom: ``Intake.on_message`` -> ``decisions.on_receipt`` ->
``Inflight.start`` -> (handler thread) ``inflight.run`` -> ``decisions.on_completion`` ->
(loop) ``Inflight.finish`` -> ``decisions.on_completed`` -> ``Settle.settle``
(``decisions.resolve``, ``Teller.tell``, then the reply and the ack) ->
``Listener.settled`` (which also gives the body's bytes back to the ``Budget``; the
``Throttle`` pauses and resumes consuming by it, once per turn).
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kombu
from amqp.exceptions import ConsumerCancelled
from kombu.mixins import ConsumerMixin
from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.amqp import topology, transport
from rpcworker.amqp.topology import Topology
from rpcworker.config import reloadplan
from rpcworker.engine.budget import Budget, Throttle
from rpcworker.engine.events import NULL, Listener, Listeners, Recorder, Stats
from rpcworker.engine.executor import Executor
from rpcworker.engine.inflight import MAX_WAIT, Inflight
from rpcworker.engine.intake import Intake
from rpcworker.engine.questions import Questions
from rpcworker.engine.readiness import Notifier, NullNotifier, Readiness
from rpcworker.engine.rebinding import Rebinding
from rpcworker.engine.recycling import Recycler
from rpcworker.engine.session import Session, log_connection_error
from rpcworker.engine.shares import describe, thread_limits_warning
from rpcworker.engine.stopping import Drain
from rpcworker.engine.streams import Streams
from rpcworker.engine.subscriptions import Subscriptions
from rpcworker.engine.telling import Teller
from rpcworker.errors import StopRequested, oneline
from rpcworker.policy.dedup import CompletedCache

LOG = logging.getLogger(__name__)


def backoff(failures_in_a_row: int, start: float, step: float, top: float) -> float:
    """Seconds before the next session after that many quick losses in a row."""
    return float(min(start + step * (failures_in_a_row - 1), top))


class Worker(ConsumerMixin):
    """One consumer loop: every binding of this process on one connection."""

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        connection: kombu.Connection,
        topologies: Sequence[Topology],
        handlers: dict[str, Any],
        executor: Executor,
        notifier: Notifier | None = None,
        recorder: Recorder = NULL,
        listeners: Sequence[Listener] = (),
        may_recycle: Callable[[], bool] | None = None,
        stable_instance: str | None = None,
    ) -> None:
        self.conf = conf
        self.connection = connection
        self.executor = executor
        self.notifier: Notifier = notifier or NullNotifier()
        self.stats = Stats()
        self.metrics = recorder
        self.recycler = Recycler(conf, executor, may_recycle)
        self.budget = Budget(conf.max_inflight_bytes, conf.max_message_size)
        self.streams = Streams(
            [q.name for t in topologies for q in t.queues if topology.is_stream(q)]
        )
        self.events = Listeners(
            [
                self.stats,
                self.budget,
                self.recycler,
                *([recorder] if recorder is not NULL else []),
                *listeners,
            ]
        )
        completed = CompletedCache(conf.duplicate_cache_size)
        self.teller = Teller()
        self.inflight = Inflight(
            executor,
            completed,
            recorder,
            conf.executor_thread_pool_size,
            self.teller,
            dropped=lambda d: self.budget.release(d.size),
            unstarted=lambda d: self.streams.lost(d.queue, d.message),
        )
        self.intake = Intake(
            conf, self.inflight, completed, self.events, self.budget, self.teller, self.streams
        )
        b = conf.broker
        self._reconnect = (
            b.reconnect_interval_start,
            b.reconnect_interval_step,
            b.reconnect_interval_max,
        )
        self.subscriptions = Subscriptions(
            topologies,
            handlers,
            self.intake.on_message,
            self.events,
            retry_interval=self._reconnect[2],
            window=self.budget.window,
            streams=self.streams,
            on_stream_message=self.intake.on_stream_message,
        )
        self.rebinding = Rebinding(self.subscriptions, stable_instance)
        self._share_threads()
        #: the bindings whose deliveries wait for a thread (for /healthz), or None;
        #: written by the loop twice a second
        self.saturated: str | None = None
        self.throttle = Throttle(self.budget, self.subscriptions)
        self.drain = Drain(conf, self.inflight, self.intake, self.subscriptions, self.notifier)
        self.questions = Questions(executor.wake)
        self.readiness = Readiness(self.notifier, self.subscriptions, self.stats, executor)
        self.should_stop = False
        self._reload_requested = False
        self._session: Session | None = None
        #: the broker host (transport_url entry) of the last session: the next one starts
        #: with the host after it (transport.Connection.failover_clone)
        self._last_host: str | None = None

    @property
    def ready(self) -> bool:
        """Every binding consumes."""
        return self.readiness.ready

    def unable(self) -> str | None:
        """Why this worker cannot take work now (for /healthz), or None."""
        return self.drain.unable()

    # -- control (any thread, signal handlers) --------------------------------------------

    def request_stop(self, immediate: bool = False) -> None:
        """Ask the loop to stop taking deliveries, drain in-flight work and return.

        ``immediate``: do not wait for running handlers (their deliveries are left
        unacknowledged for redelivery). Safe to call from a signal handler: it only
        sets flags and wakes the loop.
        """
        self.drain.recycling = None  # a stop asked for while recycling: a stop
        self._stop(immediate)

    def _stop(self, immediate: bool = False) -> None:
        self.drain.immediate = self.drain.immediate or immediate
        self.should_stop = True
        self.executor.wake()

    def request_reload(self) -> None:
        """SIGHUP. Safe from a signal handler."""
        self._reload_requested = True
        self.executor.wake()

    def idle(self) -> bool:
        """Nothing in flight, nothing to settle, no message waiting in a queue consumed.
        Loop thread only: ask it with ``worker.questions.ask(worker.idle, timeout)``."""
        s = self._session
        return (
            s is not None
            and self.inflight.idle
            and s.settle.pending == 0
            and self.subscriptions.queues_empty()
        )

    # -- the outer loop: connect, consume, reconnect --------------------------------------

    def run(self, _tokens: int = 1, **kwargs: Any) -> None:
        """Consume until stopped. Connection faults are logged and retried forever.

        Not kombu's ``run()``, which restarts ``consume()`` paced by a one-second token
        bucket and logs each loss with a traceback: here a loss is one line, quick
        repeated losses back off by ``reconnect_interval_*``, and a stop ends the wait.
        """
        errors = (
            tuple(self.connection.connection_errors)
            + tuple(self.connection.channel_errors)
            + (OSError,)
        )
        failures_in_a_row = 0
        try:
            while not self.should_stop:
                started = time.monotonic()
                try:
                    for _ in self.consume():
                        pass
                    return
                except StopRequested:
                    return
                except errors as exc:
                    lost: BaseException = exc
                if isinstance(lost, ConsumerCancelled) and self.streams.cursors:
                    LOG.warning(
                        "A consumer was cancelled by the broker: streams start at their end"
                    )
                    self.streams.reset()
                # logged outside the except block: oslo.log would append the error again
                if self.should_stop:
                    LOG.warning(
                        "Connection lost while stopping (%s); unacknowledged "
                        "messages go back to their queues",
                        oneline(lost),
                    )
                    return
                LOG.warning("Connection to the broker lost: %s; reconnecting", oneline(lost))
                self.notifier.status(f"reconnecting to the broker ({oneline(lost)})")
                failures_in_a_row = 0 if time.monotonic() - started > 10 else failures_in_a_row + 1
                if failures_in_a_row:
                    self._pause(backoff(failures_in_a_row, *self._reconnect))
        finally:
            self.questions.close()

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.should_stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.notifier.watchdog()
            with contextlib.suppress(InterruptedError, OSError, ValueError):
                select.select([self.executor.fileno()], [], [], min(left, MAX_WAIT))
            self.inflight.finish(None)  # nothing to ack: only forgets stale work
            self.questions.answer()

    # -- kombu's template -------------------------------------------------------------------

    def create_connection(self) -> kombu.Connection:
        return transport.session_clone(self.connection, self._last_host)

    @contextlib.contextmanager
    def establish_connection(self) -> Iterator[kombu.Connection]:
        """kombu's, with the reconnect intervals, a stop that ends the retries, and a
        broken link dropped without waiting for an answer to connection.close."""
        conn = self.create_connection()
        clean = False
        try:
            start, step, top = self._reconnect
            conn.ensure_connection(
                errback=self.on_connection_error,
                max_retries=None,
                interval_start=start,
                interval_step=step,
                interval_max=top,
                callback=self._check_stop,
            )
            self._session = Session(conn, self.executor.fileno(), self.events, self.teller)
            yield conn
            clean = True
        finally:
            self._session = None
            self.intake.settle = None
            self.inflight.disconnected()
            self.throttle.disconnected(self.inflight.held_bytes())
            self.subscriptions.lost()
            self.rebinding.lost()
            self.readiness.ready = False
            self.events.disconnected()
            with contextlib.suppress(Exception):
                if clean:
                    conn.release()  # connection.close handshake
                else:
                    conn.collect()  # no network I/O: a broken link may never answer

    def _check_stop(self) -> None:
        """Called by kombu about once a second while it waits to reconnect."""
        self.notifier.watchdog()  # not stuck: reconnecting
        if self.should_stop:
            raise StopRequested()

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        log_connection_error(exc, self.connection, interval)

    def on_connection_revived(self) -> None:
        s = self._session
        assert s is not None
        self.inflight.connected()
        self.throttle.connected()
        self.intake.settle = s.settle
        self.events.connected(first=self.stats.connects == 0)
        self._last_host = getattr(s.conn, "current", None)
        LOG.info("Connected to the broker at %s", transport.describe(s.conn))

    def get_consumers(self, Consumer: Any, channel: Any) -> list[kombu.Consumer]:  # noqa: N803
        """Each binding on its own channel (its own prefetch window), not the default
        channel kombu offers: see ``Subscriptions``."""
        assert self._session is not None
        return self.subscriptions.start(self._session.conn, self._session.caps)

    def on_consume_ready(
        self, connection: Any, channel: Any, consumers: Any, **kwargs: Any
    ) -> None:
        self.readiness.announce()

    def on_consume_end(self, connection: Any, channel: Any) -> None:
        self.subscriptions.delete_transient(channel)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Never called (deliveries reach ``Intake.on_message`` undecoded); kombu's own
        would ack, and an undecodable message would vanish."""
        message.reject(requeue=False)

    def consume(
        self,
        limit: int | None = None,
        timeout: float | None = None,
        safety_interval: float = 1,
        **kwargs: Any,
    ) -> Iterator[None]:
        """kombu's ``consume()`` blocks in ``drain_events(timeout=safety_interval)``: a
        handler's result would wait for the next broker event or that timeout before its
        reply and ack go out. Here each turn waits on the broker socket and the
        executor's wake-up pipe together (``Session.wait``)."""
        with self.consumer_context(**kwargs):
            session = self._session
            assert session is not None
            while True:
                wait = self.on_iteration()
                if wait is None:
                    return
                session.wait(wait)
                tick = session.heartbeat()
                if tick:  # twice a second: summaries, gauges, the STATUS line
                    self.teller.summarise()
                    self.throttle.tick()
                    self.metrics.threads(self.executor.busy, self.executor.stuck)
                    loads = self.inflight.loads()
                    self.metrics.loads(loads)
                    self.saturated = self.inflight.saturation(loads)
                    self.metrics.inflight_bytes(self.budget.held, self.throttle.seconds_throttled)
                    self.readiness.tick()
                if not self.should_stop:
                    self._recycle_if_due(check_memory=tick)
                yield

    def on_iteration(self) -> float | None:
        """Everything of one turn but the I/O; the longest wait until the next (None:
        the stop is complete)."""
        s = self._session
        assert s is not None
        settle = s.settle
        self.notifier.watchdog()
        self.inflight.finish(settle)
        if not self.should_stop:
            self.throttle.step()
        now = time.monotonic()
        wait = min(
            self.inflight.expire(now, settle),
            self.inflight.heartbeats(now, settle),
            settle.resend_returned(now),
        )
        if self.subscriptions.failed and self.subscriptions.retry_failed(now):
            self.readiness.announce()
        if self._reload_requested and not self.should_stop:
            self._reload_requested = False
            self._reload()
        settle.flush()  # acks owed on a retiring channel go out before it closes
        if self.rebinding.retiring:
            self.rebinding.close_retired(lambda b: self.inflight.holds(b) or settle.pending > 0)
        self.questions.answer()
        if self.should_stop:
            return self.drain.step(settle, wait)
        return wait

    # -- recycling and SIGHUP -------------------------------------------------------------

    def _share_threads(self) -> None:
        """Each binding's limit of handler threads (``rpcworker.engine.shares``)."""
        bindings = [t.binding for t in self.subscriptions.topologies]
        threads = self.conf.executor_thread_pool_size
        limits = self.inflight.share(bindings)
        if len(bindings) > 1:
            LOG.info(
                "Handler threads: %d; the most each binding's deliveries hold at once: %s",
                threads,
                describe(limits, threads),
            )
        warning = thread_limits_warning(bindings, threads)
        if warning:
            LOG.warning("%s", warning)

    def _recycle_if_due(self, check_memory: bool) -> None:
        reason = self.recycler.due(check_memory)
        if reason is not None:
            self.drain.recycle(reason)
            self.readiness.ready = False
            self.metrics.recycled()
            self._stop()

    def _reload(self) -> None:
        """SIGHUP: the configuration side re-reads the bindings and plans what changes,
        the rebinding carries the plan out; READY=1 again after it."""
        self.notifier.reloading()
        subs = self.subscriptions
        plan = reloadplan.reread(self.conf, [t.binding for t in subs.topologies], subs.handlers)
        if plan is not None:
            self.rebinding.apply(plan)
            self._share_threads()
            self.teller.debug_changed()
        self.readiness.announce(force=True)
