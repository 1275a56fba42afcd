"""The kombu ConsumerMixin: owns the connection, declares, acks, replies, heartbeats.

Only the thread running ``Worker.run()`` touches kombu objects. Handlers run in
the executor's threads and hand back an ``Outcome``; the loop wakes on the
executor's pipe (``select()`` on it and the broker socket together), publishes
the reply and settles the delivery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import select
import time
from collections.abc import Iterator, Sequence
from typing import Any

import kombu
from kombu.mixins import ConsumerMixin
from oslo_config import cfg
from oslo_log import log as logging

from rpcworker import dispatcher, protocol
from rpcworker.bindings import Binding
from rpcworker.dispatcher import Action, Outcome
from rpcworker.errors import StopRequested
from rpcworker.executor import Executor
from rpcworker.systemd import Notifier, NullNotifier
from rpcworker.topology import Topology

LOG = logging.getLogger(__name__)

#: most broker events handled in one go before completions get a turn
_DRAIN_BATCH = 256
#: RabbitMQ's direct reply-to pseudo-queue prefix
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: longest select() wait; also how often heartbeats are checked when idle
_MAX_WAIT = 1.0


@dataclasses.dataclass
class _Inflight:
    message: Any  # kombu.Message
    binding: Binding
    generation: int
    request: protocol.Request


@dataclasses.dataclass
class Stats:
    connects: int = 0
    received: int = 0
    acked: int = 0
    rejected: int = 0
    requeued: int = 0
    replies: int = 0
    returned: int = 0


class Worker(ConsumerMixin):
    """One consumer loop: every binding of this process on one connection."""

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
        self._debug = LOG.isEnabledFor(logging.DEBUG)
        self._max_size = conf.max_message_size
        self.ready = False
        self._stop_requested = False
        self._stop_immediate = False
        self._reload_requested = False
        self._draining = False
        self._drain_deadline = 0.0
        self._generation = 0
        self._tokens = itertools.count(1)
        self._inflight: dict[int, _Inflight] = {}
        self._monitors: dict[int, float] = {}
        self._producer: kombu.Producer | None = None
        self._consumers: list[kombu.Consumer] = []
        self._last_heartbeat_check = 0.0
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
        failures = 0
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
            failures = 0 if time.monotonic() - started > 10 else failures + 1
            if failures:
                self._pause(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        start, step, top = self._reconnect
        return float(min(start + step * (failures - 1), top))

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(InterruptedError, OSError, ValueError):
                select.select([self.executor.fileno()], [], [], min(left, _MAX_WAIT))
            self._settle_completions()  # nothing to ack: only forgets stale work

    def _check_stop(self) -> None:
        if self._stop_requested:
            raise StopRequested()

    def _on_connection_error(self, exc: BaseException, interval: float) -> None:
        LOG.warning("Cannot connect to the broker at %s: %s; next attempt in %.1f s",
                    self.connection.as_uri(), _oneline(exc), interval)

    @contextlib.contextmanager
    def _connected(self) -> Iterator[kombu.Connection]:
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
            self.ready = False
            self._consumers = []
            self._producer = None
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
            self._monitors.clear()
            self.stats.connects += 1
            LOG.info("Connected to the broker at %s", conn.as_uri())
            reply_channel = conn.default_channel
            self._producer = kombu.Producer(reply_channel, auto_declare=False,
                                            on_return=self._on_return)
            self._consumers = [self._consumer_for(conn, t) for t in self.topologies]
            for consumer in self._consumers:
                consumer.consume()
            self.ready = True
            LOG.info("Consuming: %s", "; ".join(
                f"{t.binding.name} <- {', '.join(q.name for q in t.queues)}"
                for t in self.topologies))
            self.notifier.ready(self._status_line())
            self._loop(conn)
            self._finish(conn)

    def _consumer_for(self, conn: kombu.Connection, topo: Topology) -> kombu.Consumer:
        b = topo.binding
        handler = self.handlers[b.handler]
        channel = conn.channel()  # one channel per binding: its own prefetch window

        def on_message(message: Any) -> None:
            self._on_message(b, handler, message)

        try:
            return kombu.Consumer(channel, queues=list(topo.queues), no_ack=False,
                                  auto_declare=True, on_message=on_message,
                                  prefetch_count=b.prefetch_count or None,
                                  tag_prefix=f"rpcworker-{b.name}-")
        except tuple(conn.channel_errors) as exc:
            LOG.error("binding %s: cannot declare its queues/exchanges: %s", b.name,
                      _oneline(exc))
            raise

    # -- the inner loop ------------------------------------------------------------

    def _loop(self, conn: kombu.Connection) -> None:
        amqp_conn = conn.connection
        sock = getattr(amqp_conn, "sock", None)
        wake_fd = self.executor.fileno()
        while True:
            self.notifier.watchdog()
            self._settle_completions()
            if self._reload_requested:
                self._reload_requested = False
                self.notifier.reloading()
                self.notifier.ready(self._status_line())
                LOG.warning("SIGHUP received: configuration reload is not supported by this "
                            "version; restart the service to apply changes")
            if self._stop_requested:
                if not self._draining:
                    self._begin_drain()
                if self.executor.pending == 0:
                    LOG.info("All in-flight messages handled")
                    return
                if self._stop_immediate or time.monotonic() >= self._drain_deadline:
                    LOG.warning("%s with %d handler(s) still running; their messages stay "
                                "unacknowledged and the broker will redeliver them",
                                "Second stop signal" if self._stop_immediate else
                                f"graceful_shutdown_timeout ({self.conf.graceful_shutdown_timeout}"
                                " s) reached", self.executor.pending)
                    return
            wait = self._send_monitor_heartbeats()
            if self._draining:
                wait = min(wait, max(0.0, self._drain_deadline - time.monotonic()))
            if sock is not None:
                if amqp_conn.sock is None:
                    raise ConnectionError("socket closed")
                try:
                    readable, _, _ = select.select([sock, wake_fd], [], [], wait)
                except InterruptedError:
                    readable = []
                if sock in readable:
                    self._drain(conn)
            else:  # virtual transports (memory://): poll
                self._drain(conn)
                with contextlib.suppress(InterruptedError):
                    select.select([wake_fd], [], [], min(wait, 0.01))
            now = time.monotonic()
            if now - self._last_heartbeat_check >= _MAX_WAIT / 2:
                self._last_heartbeat_check = now
                conn.heartbeat_check()

    def _status_line(self) -> str:
        return (f"consuming {len(self.topologies)} binding(s); "
                f"{self.stats.connects - 1} reconnect(s)")

    def _drain(self, conn: kombu.Connection) -> None:
        for _ in range(_DRAIN_BATCH):
            try:
                conn.drain_events(timeout=0)
            except TimeoutError:
                return

    def _begin_drain(self) -> None:
        self._draining = True
        self._drain_deadline = time.monotonic() + self.conf.graceful_shutdown_timeout
        for consumer in self._consumers:
            consumer.cancel()
        LOG.info("Stopping: consumers cancelled; waiting up to %s s for %d in-flight "
                 "handler(s)", self.conf.graceful_shutdown_timeout, self.executor.pending)
        self.notifier.stopping(f"draining {self.executor.pending} in-flight message(s)")
        self.notifier.extend_timeout(self.conf.graceful_shutdown_timeout + 10)

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
        if self._draining:
            message.reject(requeue=True)
            return
        info = _delivery_info(message)
        if self._debug:
            LOG.debug("binding %s: delivery %s from exchange %r, routing key %r%s",
                      binding.name, info.get("delivery_tag"), info.get("exchange"),
                      info.get("routing_key"), " (redelivered)" if info["redelivered"] else "")
        req = protocol.decode(message.body, message.content_type, message.content_encoding,
                              message.headers, message.properties, info, self._max_size)
        if isinstance(req, protocol.Rejected):
            LOG.warning("binding %s: message %s refused: %s", binding.name,
                        _describe(message), req.reason)
            self._settle(message, dispatcher.refused(binding, req))
            return
        if dispatcher.ack_on_receipt(binding):
            message.ack()
            self.stats.acked += 1
        token = next(self._tokens)
        self._inflight[token] = _Inflight(message, binding, self._generation, req)
        if req.monitor_timeout:
            self._monitors[token] = time.monotonic() + req.monitor_timeout / 2
        self.executor.submit(token, dispatcher.dispatch, handler, binding, req)

    def _settle_completions(self) -> None:
        done = self.executor.completed()
        if not done:
            return
        current = []
        for token, outcome in done:
            item = self._inflight.pop(token, None)
            self._monitors.pop(token, None)
            if item is None:
                continue
            if item.generation != self._generation or self._producer is None:
                LOG.debug("dropping the outcome of a delivery from a lost connection; "
                          "the broker redelivers it")
                continue
            if not isinstance(outcome, Outcome):  # the dispatcher never raises
                outcome = Outcome(Action.REJECT)
            current.append((item, outcome))
        for item, outcome in current:
            self._settle(item.message, outcome)

    def _settle(self, message: Any, outcome: Outcome) -> None:
        """Publish the reply (if any), then apply the ack decision of the dispatcher."""
        if outcome.reply is not None:
            self._publish(outcome.reply)
        action = outcome.action
        if action is Action.ACK:
            message.ack()
            self.stats.acked += 1
        elif action is Action.REJECT:
            message.reject(requeue=False)
            self.stats.rejected += 1
        elif action is Action.REQUEUE:
            message.reject(requeue=True)
            self.stats.requeued += 1

    def _publish(self, reply: protocol.Reply) -> None:
        assert self._producer is not None
        # mandatory, so that a vanished reply queue is reported (basic.return) — but
        # not for RabbitMQ direct reply-to, whose pseudo-queue always "returns"
        direct_reply_to = reply.routing_key.startswith(DIRECT_REPLY_TO)
        self._producer.publish(
            reply.body, exchange="", routing_key=reply.routing_key,
            content_type=protocol.JSON, content_encoding="utf-8",
            correlation_id=reply.correlation_id, mandatory=not direct_reply_to,
            retry=False, delivery_mode=2,
        )
        self.stats.replies += 1

    def _on_return(self, exc: BaseException, exchange: str, routing_key: str,
                   message: Any) -> None:
        self.stats.returned += 1
        LOG.warning("Reply to %r could not be routed (the caller's reply queue is gone): "
                    "%s; dropped", routing_key, _oneline(exc))

    def _send_monitor_heartbeats(self) -> float:
        """Send due oslo call-monitor heartbeats; return seconds until the next is due."""
        if not self._monitors:
            return _MAX_WAIT
        now = time.monotonic()
        wait = _MAX_WAIT
        for token, due in list(self._monitors.items()):
            item = self._inflight.get(token)
            if item is None or item.request.reply is None or item.request.monitor_timeout is None:
                del self._monitors[token]
                continue
            if due <= now:
                self._publish(protocol.encode_heartbeat(item.request.reply))
                due = now + item.request.monitor_timeout / 2
                self._monitors[token] = due
            wait = min(wait, due - now)
        return max(0.0, wait)


def _delivery_info(message: Any) -> dict[str, Any]:
    info = dict(getattr(message, "delivery_info", None) or {})
    if "redelivered" not in info:
        # kombu's virtual transports (memory://) keep the flag in the raw payload
        # dict. (Never touch message.payload: it runs kombu's deserializers.)
        raw = getattr(message, "_raw", None)
        info["redelivered"] = bool(isinstance(raw, dict) and raw.get("redelivered"))
    return info


def _describe(message: Any) -> str:
    info = getattr(message, "delivery_info", {}) or {}
    return (f"(exchange {info.get('exchange', '')!r}, routing key "
            f"{info.get('routing_key', '')!r}, content type {message.content_type!r})")


def _oneline(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
