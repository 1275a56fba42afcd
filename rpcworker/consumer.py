"""The kombu ConsumerMixin: owns the connection, declares, consumes, heartbeats.

Only the thread running ``Worker.run()`` touches kombu objects. Handlers run in
the executor's threads and hand back an ``Outcome``; the loop wakes on the
executor's pipe (``select()`` on it and the broker socket together) and hands
the outcome to the connection's ``Outbox``, which replies and settles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kombu
from kombu.mixins import ConsumerMixin
from kombu.transport import pyamqp
from oslo_config import cfg
from oslo_log import log as logging

from rpcworker import broker, dispatcher, failures, protocol, ratelimit, readahead, reload, topology
from rpcworker import metrics as metrics_mod
from rpcworker.bindings import Binding
from rpcworker.dedup import CompletedCache
from rpcworker.dispatcher import Action, Outcome
from rpcworker.errors import ConfigError, PluginError, StopRequested
from rpcworker.executor import Executor
from rpcworker.outbox import Delivery, Outbox, Stats
from rpcworker.systemd import Notifier, NullNotifier
from rpcworker.topology import Topology

LOG = logging.getLogger(__name__)

#: most broker events handled in one go before completions get a turn
_DRAIN_BATCH = 256
#: longest select() wait; also how often heartbeats are checked when idle
_MAX_WAIT = 1.0

__all__ = ["Stats", "Worker"]


@dataclasses.dataclass
class _Inflight:
    delivery: Delivery
    generation: int
    deadline: float | None  # handler_timeout


class Worker(ConsumerMixin):
    """One consumer loop: every binding of this process on one connection."""

    #: Prometheus instruments (service.build sets them when [metrics] listen is set)
    metrics: metrics_mod.Recorder = metrics_mod.NULL

    def __init__(self, conf: cfg.ConfigOpts, connection: kombu.Connection,
                 topologies: Sequence[Topology], handlers: dict[str, Any],
                 executor: Executor, notifier: Notifier | None = None) -> None:
        self.conf = conf
        self.connection = connection
        self.topologies = list(topologies)
        self.handlers = handlers
        self.executor = executor
        self.notifier: Notifier = notifier or NullNotifier()
        self.stats = Stats()
        self.completed = CompletedCache(conf.duplicate_cache_size)
        self._debug = LOG.isEnabledFor(logging.DEBUG)
        self._max_size = conf.max_message_size
        self.ready = False
        self._stop_requested = False
        self._stop_immediate = False
        self._reload_requested = False
        self._draining = False
        self._drain_deadline = 0.0
        self._generation = 0
        #: the generation whose connection is up (0 while disconnected): read by
        #: handler threads to skip queued work of a lost connection
        self._live_generation = 0
        self._tokens = itertools.count(1)
        self._inflight: dict[int, _Inflight] = {}
        self._abandoned: set[int] = set()
        self._monitors: dict[int, float] = {}
        self._outbox: Outbox | None = None
        self._consumers: dict[str, kombu.Consumer] = {}
        self._queue_of_tag: dict[str, str] = {}
        self._failed: dict[str, float] = {}  # binding name -> next declaration attempt
        #: bindings taken away by a reload, kept open until their in-flight work is settled
        self._retiring: list[tuple[Binding, Any, tuple[str, ...]]] = []
        self._last_heartbeat_check = 0.0
        #: the broker host (transport_url entry) of the last session: the next one starts
        #: with the host after it (broker.Connection.failover_clone)
        self._last_host: str | None = None
        #: refusal log lines: at most 10 per binding in 10 s, then one summary
        self._refusals = ratelimit.LogLimiter()
        b = conf.broker
        self._reconnect = (b.reconnect_interval_start, b.reconnect_interval_step,
                           b.reconnect_interval_max)

    # -- control (any thread, signal handlers) --------------------------------

    def request_stop(self, immediate: bool = False) -> None:
        """Ask the loop to stop taking deliveries, drain in-flight work and return.

        ``immediate``: do not wait for running handlers (their deliveries are left
        unacknowledged for redelivery). Safe to call from a signal handler: it only
        sets flags and wakes the loop.
        """
        self._stop_requested = True
        self._stop_immediate = self._stop_immediate or immediate
        self.should_stop = True
        self.executor.wake()

    def request_reload(self) -> None:
        """SIGHUP. Safe from a signal handler."""
        self._reload_requested = True
        self.executor.wake()

    # -- the outer loop: connect, consume, reconnect ----------------------------

    def run(self, _tokens: int = 1, **kwargs: Any) -> None:
        """Consume until stopped. Connection faults are logged and retried forever."""
        errors = tuple(self.connection.connection_errors) + tuple(
            self.connection.channel_errors) + (OSError,)
        failures_in_a_row = 0
        while not self._stop_requested:
            started = time.monotonic()
            lost: BaseException | None = None
            try:
                self._session()
                return
            except StopRequested:
                return
            except errors as exc:
                lost = exc
            # logged outside the except block: oslo.log would append the error again
            self.ready = False
            if self._stop_requested:
                LOG.warning("Connection lost while stopping (%s); unacknowledged "
                            "messages go back to their queues", _oneline(lost))
                return
            LOG.warning("Connection to the broker lost: %s; reconnecting", _oneline(lost))
            self.notifier.status(f"reconnecting to the broker ({_oneline(lost)})")
            failures_in_a_row = 0 if time.monotonic() - started > 10 else failures_in_a_row + 1
            if failures_in_a_row:
                self._pause(self._backoff(failures_in_a_row))

    def _backoff(self, failures_in_a_row: int) -> float:
        start, step, top = self._reconnect
        return float(min(start + step * (failures_in_a_row - 1), top))

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.notifier.watchdog()
            with contextlib.suppress(InterruptedError, OSError, ValueError):
                select.select([self.executor.fileno()], [], [], min(left, _MAX_WAIT))
            self._settle_completions()  # nothing to ack: only forgets stale work

    def _check_stop(self) -> None:
        """Called by kombu about once a second while it waits to reconnect."""
        self.notifier.watchdog()  # not stuck: reconnecting
        if self._stop_requested:
            raise StopRequested()

    def _retry_queues(self, binding: Binding, queue: Any) -> list[Any]:
        """The delay queues of ``queue``; none on kombu's filesystem transport, which has
        no message TTL to bring a retry back (its failures are dead-lettered at once)."""
        if getattr(self.connection.transport, "driver_type", "") == "filesystem":
            return []
        return failures.retry_queues(binding, queue)

    def _on_connection_error(self, exc: BaseException, interval: float) -> None:
        args = (broker.attempted(exc, self.connection), broker.explain(exc), interval)
        # kombu calls this inside its except block, and oslo.log appends the exception
        # being handled to a line logged there: log from a thread that handles none
        t = threading.Thread(target=LOG.warning, name="rpcworker-log", args=(
            "Cannot connect to the broker at %s: %s; next attempt in %.1f s", *args))
        t.start()
        t.join()

    @contextlib.contextmanager
    def _connected(self) -> Iterator[kombu.Connection]:
        if isinstance(self.connection, broker.Connection):
            conn = self.connection.failover_clone(self._last_host)
        else:
            conn = self.connection.clone()
        clean = False
        try:
            start, step, top = self._reconnect
            conn.ensure_connection(
                errback=self._on_connection_error, max_retries=None,
                interval_start=start, interval_step=step, interval_max=top,
                callback=self._check_stop,
            )
            yield conn
            clean = True
        finally:
            self._live_generation = 0
            self.ready = False
            self.metrics.connection_down()
            self._consumers = {}
            self._queue_of_tag = {}
            self._failed = {}
            self._retiring = []
            self._outbox = None
            with contextlib.suppress(Exception):
                if clean:
                    conn.release()  # connection.close handshake
                else:
                    # a broken link may never answer connection.close: drop the
                    # socket without any network I/O
                    conn.collect()

    def _session(self) -> None:
        with self._connected() as conn:
            self._generation += 1
            self._live_generation = self._generation
            self._monitors.clear()
            self.stats.connects += 1
            self.metrics.connection_up(first=self.stats.connects == 1)
            self._last_host = getattr(conn, "current", None)
            LOG.info("Connected to the broker at %s", _where(conn))
            retryable = {q.name for t in self.topologies for q in t.queues
                         if self._retry_queues(t.binding, q)}
            self._outbox = Outbox(conn, self.stats, retryable, self.metrics)
            amqp_conn = conn.connection
            if hasattr(amqp_conn, "on_blocked"):
                amqp_conn.on_blocked = self._outbox.on_blocked
                amqp_conn.on_unblocked = self._outbox.on_unblocked
            for topo in self.topologies:
                self._start_binding(conn, topo)
            self._announce()
            self._loop(conn)
            self._finish(conn)

    def _start_binding(self, conn: kombu.Connection, topo: Topology) -> None:
        """Declare and consume one binding on its own channel (its own prefetch window).

        A declaration the broker refuses (406 PRECONDITION_FAILED, 405 RESOURCE_LOCKED,
        ...) closes only that channel: it is logged in one line, the other bindings go
        on, and it is tried again every reconnect_interval_max seconds.
        """
        b = topo.binding
        handler = self.handlers[b.handler]
        channel = conn.channel()
        if isinstance(channel, pyamqp.Channel):
            # bodies stay bytes (py-amqp would decode them with the codec the message
            # names) and kombu does not inflate a `compression` body: both are refused
            channel.auto_decode = False
            channel.Message = _UninflatedMessage

        def on_message(message: Any) -> None:
            self._on_message(b, handler, message)

        try:
            for queue in topo.queues:
                for delay_queue in self._retry_queues(b, queue):
                    delay_queue(channel).declare()
            exchange, parking = failures.parking_lot(b)
            if exchange is not None:
                exchange(channel).declare()
            if parking is not None:
                parking(channel).declare()
            consumer = kombu.Consumer(channel, queues=list(topo.queues), no_ack=False,
                                      auto_declare=True, on_message=on_message,
                                      prefetch_count=b.prefetch_count or None,
                                      tag_prefix=f"rpcworker-{b.name}-")
            consumer.consume()
        except tuple(conn.channel_errors) as exc:
            retry_in = self._reconnect[2]
            self._failed[b.name] = time.monotonic() + retry_in
            LOG.error("binding %s: the broker refused its declarations: %s; the other "
                      "bindings go on, this one is tried again in %g s", b.name,
                      _oneline(exc), retry_in)
            with contextlib.suppress(Exception):
                channel.close()
            return
        self._failed.pop(b.name, None)
        self._consumers[b.name] = consumer
        self.metrics.consuming(b.name, True)
        for queue_name, tag in getattr(consumer, "_active_tags", {}).items():
            self._queue_of_tag[tag] = queue_name

    def _retry_failed_bindings(self, conn: kombu.Connection) -> None:
        now = time.monotonic()
        due = [t for t in self.topologies if self._failed.get(t.binding.name, now + 1) <= now]
        for topo in due:
            self._start_binding(conn, topo)
        if due:
            self._announce()

    def _announce(self, force: bool = False) -> None:
        """Log what is consumed; READY=1 once every binding consumes (again after a
        reload when ``force``), else a STATUS line naming what is missing."""
        consuming = [t for t in self.topologies if t.binding.name in self._consumers]
        if consuming:
            LOG.info("Consuming: %s", "; ".join(
                f"{t.binding.name} <- {', '.join(q.name for q in t.queues)}"
                for t in consuming))
        if not self._failed and (force or not self.ready):
            self.ready = True
            self.notifier.ready(self._status_line())
        elif self._failed:
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        line = (f"consuming {len(self._consumers)} of {len(self.topologies)} binding(s); "
                f"{self.stats.connects - 1} reconnect(s)")
        if self._failed:
            line += f"; not declared: {', '.join(sorted(self._failed))}"
        return line

    # -- the inner loop ------------------------------------------------------------

    def _loop(self, conn: kombu.Connection) -> None:
        amqp_conn = conn.connection
        sock = getattr(amqp_conn, "sock", None)
        reader = readahead.install(amqp_conn) if sock is not None else None
        buffered = reader.pending if reader is not None else getattr(sock, "pending", None)
        wake_fd = self.executor.fileno()
        outbox = self._outbox
        assert outbox is not None
        while True:
            self.notifier.watchdog()
            self._settle_completions()
            now = time.monotonic()
            wait = min(self._expire_handlers(now), self._send_monitor_heartbeats(now),
                       outbox.resend_returned(now))
            if self._failed:
                self._retry_failed_bindings(conn)
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
                self._reload(conn)
            if self._retiring:
                self._close_retired(conn)
            outbox.flush()
            if self._stop_requested:
                if not self._draining:
                    self._begin_drain()
                busy = self.executor.pending - len(self._abandoned)
                if busy <= 0 and outbox.pending == 0:
                    LOG.info("All in-flight messages handled")
                    return
                if self._stop_immediate or time.monotonic() >= self._drain_deadline:
                    outbox.flush()
                    LOG.warning("%s with %d handler(s) still running; their messages stay "
                                "unacknowledged and the broker will redeliver them",
                                "Second stop signal" if self._stop_immediate else
                                f"graceful_shutdown_timeout ({self.conf.graceful_shutdown_timeout}"
                                " s) reached", busy)
                    return
                wait = min(wait, max(0.0, self._drain_deadline - time.monotonic()))
            if sock is not None:
                if amqp_conn.sock is None:
                    raise ConnectionError("socket closed")
                if buffered is not None and buffered():
                    readable = [sock]  # bytes already read: select() cannot see them
                else:
                    try:
                        readable, _, _ = select.select([sock, wake_fd], [], [], wait)
                    except InterruptedError:
                        readable = []
                if sock in readable:
                    self._drain_socket(amqp_conn, sock, buffered)
            else:  # virtual transports (memory://): poll
                self._drain(conn)
                with contextlib.suppress(InterruptedError):
                    select.select([wake_fd], [], [], min(wait, 0.01))
            now = time.monotonic()
            if now - self._last_heartbeat_check >= _MAX_WAIT / 2:
                self._last_heartbeat_check = now
                conn.heartbeat_check()
                self._log_refusal_summaries()

    # -- SIGHUP ---------------------------------------------------------------------------

    def _reload(self, conn: kombu.Connection) -> None:
        """Re-read the configuration; re-bind only the bindings that changed.

        A removed or changed binding stops taking deliveries (basic.cancel) but keeps
        its channel until its in-flight messages are settled, so nothing is lost or
        handled twice; a new or changed binding is declared and consumed at once.
        """
        self.notifier.reloading()
        LOG.info("SIGHUP: re-reading the configuration")
        try:
            plan = reload.plan(self.conf, [t.binding for t in self.topologies], self.handlers)
        except (ConfigError, PluginError) as exc:
            LOG.error("SIGHUP: the new configuration is refused, nothing changed: %s", exc)
            self._announce(force=True)
            return
        except Exception:  # a reload must never take the worker down
            LOG.exception("SIGHUP: reading the new configuration failed, nothing changed")
            self._announce(force=True)
            return
        self._debug = LOG.isEnabledFor(logging.DEBUG)
        self.handlers.update(plan.new_handlers)
        if plan.empty:
            LOG.info("SIGHUP: bindings unchanged")
            self._announce(force=True)
            return
        old = {t.binding.name: t for t in self.topologies}
        for name in plan.removed + plan.changed:
            self._retire(old[name])
        fresh = set(plan.added) | set(plan.changed)
        self.topologies = [topology.build(b) if b.name in fresh else old[b.name]
                           for b in plan.bindings]
        assert self._outbox is not None
        self._outbox.retryable |= {q.name for t in self.topologies for q in t.queues
                                   if self._retry_queues(t.binding, q)}
        for topo in self.topologies:
            if topo.binding.name in fresh:
                self._start_binding(conn, topo)
                if topo.binding.name in old:
                    self._unbind_dropped_keys(conn, old[topo.binding.name], topo)
        LOG.info("SIGHUP: bindings added %s, removed %s, changed %s", plan.added or "none",
                 plan.removed or "none", plan.changed or "none")
        self._announce(force=True)

    def _unbind_dropped_keys(self, conn: kombu.Connection, before: Topology,
                             after: Topology) -> None:
        """Remove queue bindings (exchange, routing key) that the new config no longer has."""
        def keys(t: Topology) -> dict[str, set[tuple[str, str]]]:
            return {q.name: {(b.exchange.name, b.routing_key) for b in q.bindings}
                    | ({(q.exchange.name, q.routing_key)} if q.exchange and q.exchange.name
                       else set()) for q in t.queues}
        now = keys(after)
        for queue, pairs in keys(before).items():
            if queue not in now:
                continue
            for exchange, key in sorted(pairs - now[queue]):
                try:
                    conn.default_channel.queue_unbind(queue, exchange, key or "")
                    LOG.info("binding %s: queue %s unbound from %s with key %r",
                             after.binding.name, queue, exchange, key)
                except tuple(conn.channel_errors) as exc:
                    LOG.warning("binding %s: could not unbind %s from %s (%r): %s",
                                after.binding.name, queue, exchange, key, _oneline(exc))

    def _retire(self, topo: Topology) -> None:
        name = topo.binding.name
        self._failed.pop(name, None)
        consumer = self._consumers.pop(name, None)
        if consumer is None:
            return
        self.metrics.consuming(name, False)
        with contextlib.suppress(*tuple(self.connection.channel_errors)):
            consumer.cancel()
        self._retiring.append((topo.binding, consumer.channel, topo.transient))

    def _close_retired(self, conn: kombu.Connection) -> None:
        if self._outbox is not None:
            self._outbox.flush()  # acks owed on a retiring channel go out before it closes
        busy = {id(i.delivery.binding) for i in self._inflight.values()}
        outbox_busy = self._outbox is not None and self._outbox.pending > 0
        for entry in list(self._retiring):
            binding, channel, transient = entry
            if id(binding) in busy or outbox_busy:
                continue
            self._retiring.remove(entry)
            for name in transient:
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.close()
            LOG.info("binding %s: previous consumer closed, its in-flight work settled",
                     binding.name)

    def _drain_socket(self, amqp_conn: Any, sock: Any,
                      buffered: Callable[[], int] | None) -> None:
        """Read what the socket has, one frame at a time (blocking: the socket is
        readable, so it returns at once; a frame split across packets is waited for),
        polling the socket again without waiting between frames. Cheaper than
        drain_events(timeout=0), which sets and resets the socket timeout each time,
        and never blocks on a heartbeat frame as drain_events(None) would."""
        poll = select.select
        read_frame = amqp_conn.blocking_read
        for _ in range(_DRAIN_BATCH * 3):  # about three frames per delivery
            read_frame(None)
            # bytes already read (ReadAhead, or TLS-decrypted) are invisible to select()
            if not (buffered is not None and buffered()) and not poll([sock], [], [], 0)[0]:
                return

    def _drain(self, conn: kombu.Connection) -> None:
        for _ in range(_DRAIN_BATCH):
            try:
                conn.drain_events(timeout=0)
            except TimeoutError:
                return

    def _begin_drain(self) -> None:
        self._draining = True
        self._drain_deadline = time.monotonic() + self.conf.graceful_shutdown_timeout
        for consumer in self._consumers.values():
            consumer.cancel()
        busy = self.executor.pending - len(self._abandoned)
        LOG.info("Stopping: consumers cancelled; waiting up to %s s for %d in-flight "
                 "handler(s)", self.conf.graceful_shutdown_timeout, busy)
        self.notifier.stopping(f"draining {busy} in-flight message(s)")
        self.notifier.extend_timeout(self.conf.graceful_shutdown_timeout + 10)
        self._log_refusal_summaries(final=True)

    def _finish(self, conn: kombu.Connection) -> None:
        """Clean stop: delete this process's transient queues (as oslo.messaging does)."""
        channel = conn.default_channel
        for topo in self.topologies:
            for name in topo.transient:
                try:
                    channel.queue_delete(name)
                except Exception as exc:  # best effort: x-expires removes it anyway
                    LOG.debug("could not delete queue %s: %s", name, exc)

    # -- deliveries -------------------------------------------------------------------

    def _on_message(self, binding: Binding, handler: Any, message: Any) -> None:
        self.stats.received += 1
        self.metrics.received(binding.name)
        if self._draining:
            message.reject(requeue=True)
            self.metrics.rejected(binding.name)
            return
        outbox = self._outbox
        assert outbox is not None
        outbox.received(message)
        info = _delivery_info(message)
        queue = self._queue_of_tag.get(str(info.get("consumer_tag")), "")
        if not queue:
            topo = next(t for t in self.topologies if t.binding is binding)
            queue = topo.queues[0].name
        if self._debug:
            LOG.debug("binding %s: delivery %s on %s from exchange %r, routing key %r%s%s",
                      binding.name, info.get("delivery_tag"), queue, info.get("exchange"),
                      info.get("routing_key"), _id_text(_ids(message, None)),
                      " (redelivered)" if info["redelivered"] else "",
                      extra={"binding": binding.name, **_ids(message, None)})
        req = protocol.decode(message.body, message.content_type, message.content_encoding,
                              message.headers, message.properties, info, self._max_size)
        if isinstance(req, protocol.Rejected):
            self._log_refused(binding, message, req.reason)
            outbox.settle(Delivery(message, binding, queue, None),
                          dispatcher.refused(binding, req))
            return
        delivery = Delivery(message, binding, queue, req)
        early = dispatcher.on_receipt(binding, req)
        if early is not None:
            outbox.settle(delivery, early)
            return
        if req.unique_id and req.unique_id in self.completed:
            LOG.info("binding %s: request %s already completed; not run again",
                     binding.name, dispatcher.what(req),
                     extra=dispatcher.log_fields(binding.name, req))
            self.stats.duplicates += 1
            outbox.settle(delivery, dispatcher.duplicate(binding,
                                                         self.completed.get(req.unique_id)))
            return
        unknown = dispatcher.unknown_method(handler, binding, req)
        if unknown is not None:
            self._log_refused(binding, message, unknown.reason or "", req)
            outbox.settle(delivery, unknown)
            return
        if dispatcher.ack_on_receipt(binding):
            # at-most-once: the ack must be on the wire before the handler can run (and
            # perhaps take the process down), so it is not left for the batched flush
            outbox.ack(message)
            self.metrics.acked(binding.name)
            outbox.flush()
        token = next(self._tokens)
        deadline = (time.monotonic() + binding.handler_timeout
                    if binding.handler_timeout else None)
        self._inflight[token] = _Inflight(delivery, self._generation, deadline)
        if req.monitor_timeout:
            self._monitors[token] = time.monotonic() + req.monitor_timeout / 2
        self.executor.submit(token, self._run_handler, self._generation, handler, binding, req)

    def _log_refused(self, binding: Binding, message: Any, reason: str,
                     request: protocol.Request | None = None) -> None:
        """One line per refused message, rate limited per binding (see ratelimit)."""
        self._log_refusal_summaries()
        if self._refusals.admit(binding.name, reason):
            fields = dispatcher.log_fields(binding.name, request)
            LOG.warning("binding %s: message %s refused: %s", binding.name,
                        _describe(message, request), _printable(reason),
                        extra={**fields, **_ids(message, request)})

    def _log_refusal_summaries(self, final: bool = False) -> None:
        """The refusal lines held back in windows that are over (all of them: final)."""
        for s in self._refusals.pending() if final else self._refusals.expired():
            LOG.warning("binding %s: %d more messages refused in the last %g s (last "
                        "reason: %s)", s.key, s.count, s.interval, s.last_reason)

    def _run_handler(self, generation: int, handler: Any, binding: Binding,
                     request: protocol.Request) -> Outcome | None:
        """In a handler thread. Work queued for a connection that is gone is skipped:
        the broker redelivers it, so running it now would only make a duplicate."""
        if generation != self._live_generation:
            return None
        return self.metrics.run_handler(
            binding.name, lambda: dispatcher.dispatch(handler, binding, request))

    def _settle_completions(self) -> None:
        done = self.executor.completed()
        if not done:
            return
        current = []
        for token, outcome in done:
            if token in self._abandoned:  # timed out earlier and already settled
                self._abandoned.discard(token)
                continue
            item = self._inflight.pop(token, None)
            self._monitors.pop(token, None)
            if item is None or outcome is None:  # None: skipped, its connection was lost
                continue
            if not isinstance(outcome, Outcome):  # the dispatcher never raises
                outcome = Outcome(Action.DEAD_LETTER, reason=f"internal error: {outcome!r}")
            request = item.delivery.request
            if request is not None and outcome.action in (Action.ACK, Action.NONE):
                self.completed.add(request.unique_id, outcome.reply)
            if item.generation != self._generation or self._outbox is None:
                LOG.debug("dropping the outcome of a delivery from a lost connection; "
                          "the broker redelivers it")
                continue
            current.append((item, outcome))
        for item, outcome in current:
            self._outbox.settle(item.delivery, outcome)  # type: ignore[union-attr]

    def _expire_handlers(self, now: float) -> float:
        """Settle deliveries whose handler ran past handler_timeout; seconds to the next."""
        wait = _MAX_WAIT
        for token, item in list(self._inflight.items()):
            if item.deadline is None:
                continue
            if item.deadline > now:
                wait = min(wait, item.deadline - now)
                continue
            del self._inflight[token]
            self._monitors.pop(token, None)
            self._abandoned.add(token)
            self.stats.timeouts += 1
            d = item.delivery
            if item.generation == self._generation and self._outbox is not None \
                    and d.request is not None:
                self._outbox.settle(d, dispatcher.timed_out(d.binding, d.request))
            LOG.warning("%d handler thread(s) of %d abandoned after handler_timeout",
                        len(self._abandoned), self.conf.executor_thread_pool_size)
        return wait

    def _send_monitor_heartbeats(self, now: float) -> float:
        """Send due oslo call-monitor heartbeats; return seconds until the next is due."""
        if not self._monitors or self._outbox is None or self._outbox.blocked:
            return _MAX_WAIT
        wait = _MAX_WAIT
        for token, due in list(self._monitors.items()):
            item = self._inflight.get(token)
            request = item.delivery.request if item is not None else None
            if request is None or request.reply is None or request.monitor_timeout is None:
                del self._monitors[token]
                continue
            if due <= now:
                self._outbox.reply(protocol.encode_heartbeat(request.reply))
                due = now + request.monitor_timeout / 2
                self._monitors[token] = due
            wait = min(wait, due - now)
        return max(0.0, wait)


class _UninflatedMessage(pyamqp.Message):
    """kombu's AMQP message without kombu's inflating of a body with a ``compression``
    header: a body that did not inflate raised in the consumer loop, and one that did (a
    zip bomb) was inflated in memory before anything could refuse it."""

    def __init__(self, msg: Any, channel: Any = None, **kwargs: Any) -> None:
        headers = msg.properties.get("application_headers") or {}
        if "compression" in headers:
            msg.properties["application_headers"] = {
                k: v for k, v in headers.items() if k != "compression"}
        try:
            super().__init__(msg, channel=channel, **kwargs)
        finally:
            msg.properties["application_headers"] = headers
        self.headers = headers  # protocol.decode refuses it


def _where(conn: kombu.Connection) -> str:
    if getattr(conn.transport, "driver_type", "") == "filesystem":
        folder = (conn.transport_options or {}).get("data_folder_in", "")
        return f"filesystem:// (no broker: kombu's filesystem transport in {folder})"
    return str(conn.as_uri())


def _delivery_info(message: Any) -> dict[str, Any]:
    info = dict(getattr(message, "delivery_info", None) or {})
    if "redelivered" not in info:
        # kombu's virtual transports (memory://) keep the flag in the raw payload
        # dict. (Never touch message.payload: it runs kombu's deserializers.)
        raw = getattr(message, "_raw", None)
        info["redelivered"] = bool(isinstance(raw, dict) and raw.get("redelivered"))
    return info


def _describe(message: Any, request: protocol.Request | None = None) -> str:
    info = getattr(message, "delivery_info", {}) or {}
    return (f"(exchange {info.get('exchange', '')!r}, routing key "
            f"{info.get('routing_key', '')!r}, content type {message.content_type!r}"
            f"{_id_text(_ids(message, request))})")


def _ids(message: Any, request: protocol.Request | None) -> dict[str, Any]:
    """The ids of a delivery for its log lines: the decoded request's (msg_id, unique_id,
    ...), else the AMQP message_id property when there is one."""
    if request is not None:
        return dispatcher.log_ids(request)
    message_id = (getattr(message, "properties", None) or {}).get("message_id")
    return {} if message_id is None else {"message_id": message_id}


def _id_text(ids: dict[str, Any]) -> str:
    """``, msg_id='..', unique_id='..'`` (repr: an id cannot forge log lines)."""
    return "".join(f", {key}={value!r}" for key, value in ids.items())


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a message cannot forge log lines."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _oneline(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
