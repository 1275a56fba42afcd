"""Carries out the dispatcher's decisions on one connection: replies, acks, retries,
dead letters. Loop thread only; one Outbox per connection.

* replies go on the default channel, mandatory (a vanished reply queue comes back
  as basic.return and is re-sent with backoff for up to REPLY_RETRY_TIMEOUT, as
  oslo.messaging does, then dropped with a log line);
* copies (retry, dead letter, redelivery count) go on a confirm-mode channel and
  the original is acked only once the broker has confirmed the copy;
* while the broker has the connection blocked (memory or disk alarm) nothing is
  published: settlements that need a publish wait and go out on unblock.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import amqp
import kombu
from oslo_log import log as logging

from rpcworker import failures, protocol
from rpcworker.bindings import Binding
from rpcworker.dispatcher import Action, Outcome, log_fields, what
from rpcworker.metrics import NULL, Recorder
from rpcworker.publisher import ConfirmPublisher

LOG = logging.getLogger(__name__)

#: RabbitMQ's direct reply-to pseudo-queue prefix
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: how long a returned reply is re-sent (oslo's kombu_missing_consumer_retry_timeout)
REPLY_RETRY_TIMEOUT = 60.0
_REPLY_RETRY_FIRST = 0.25
_REPLY_RETRY_MAX_STEP = 5.0


@dataclasses.dataclass
class Delivery:
    """One received message and where it came from."""

    message: Any  # kombu.Message
    binding: Binding
    queue: str
    request: protocol.Request | None  # None when it could not be decoded


@dataclasses.dataclass
class Stats:
    connects: int = 0
    received: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    counted: int = 0
    duplicates: int = 0
    timeouts: int = 0
    replies: int = 0
    returned: int = 0


@dataclasses.dataclass
class _ReturnedReply:
    reply: protocol.Reply
    due: float
    step: float
    give_up: float


class Outbox:
    def __init__(self, conn: kombu.Connection, stats: Stats, retryable: set[str],
                 metrics: Recorder = NULL) -> None:
        self.stats = stats
        self.metrics = metrics
        #: queues that have delay queues declared; failures elsewhere dead-letter
        self.retryable = retryable
        self.blocked = False
        # kombu's filesystem channel has no events (no basic.return): no on_return there
        self._producer = kombu.Producer(
            conn.default_channel, auto_declare=False,
            on_return=self._on_reply_return if hasattr(conn.default_channel, "events")
            else None)
        # replies on py-amqp go straight to basic_publish: kombu's Producer.publish
        # costs more than the rest of a small reply's trip through the worker
        channel = conn.default_channel
        self._raw_publish = (channel.basic_publish
                             if getattr(conn.transport, "driver_type", "") == "amqp" else None)
        self._copies = ConfirmPublisher(conn.channel())
        self._deferred: list[tuple[Delivery, Outcome]] = []
        self._returned: list[_ReturnedReply] = []
        # Acks are collected during a loop iteration and sent by flush(): a run of
        # settled deliveries below the oldest unsettled one goes as ONE basic.ack
        # with multiple=True. Only on py-amqp (virtual transports ack one by one).
        self._batch = getattr(conn.transport, "driver_type", "") == "amqp"
        self._open: dict[Any, set[int]] = {}  # channel -> delivered, not yet settled
        self._to_ack: dict[Any, list[int]] = {}  # channel -> settled as ack, not sent

    @property
    def pending(self) -> int:
        """Copies not yet confirmed and settlements waiting for an unblock."""
        return self._copies.pending + len(self._deferred)

    # -- flow control ---------------------------------------------------------------

    def on_blocked(self, reason: str) -> None:
        self.blocked = True
        LOG.warning("The broker blocked the connection (%s): replies and republishing "
                    "wait until it unblocks", reason)

    def on_unblocked(self) -> None:
        self.blocked = False
        deferred, self._deferred = self._deferred, []
        LOG.warning("The broker unblocked the connection; sending %d deferred "
                    "settlement(s)", len(deferred))
        for delivery, outcome in deferred:
            self.settle(delivery, outcome)

    # -- settling ----------------------------------------------------------------

    def settle(self, d: Delivery, outcome: Outcome) -> None:
        """Publish the reply (if any), then carry out the action the dispatcher chose."""
        action = outcome.action
        if action is Action.RETRY and d.queue not in self.retryable:
            LOG.warning("binding %s: %s: queue %s has no delay queue (it is exclusive, or "
                        "the transport has no message TTL): dead-lettered instead of retried",
                        d.binding.name, _what(d), d.queue,
                        extra=log_fields(d.binding.name, d.request))
            action = Action.DEAD_LETTER
            outcome = dataclasses.replace(outcome, action=action)
        publishes = outcome.reply is not None or action in (Action.RETRY, Action.COUNT) or (
            action is Action.DEAD_LETTER and d.binding.dead_letters_published)
        if publishes and self.blocked:
            self._deferred.append((d, outcome))
            return
        if outcome.reply is not None:
            self.reply(outcome.reply)
        if action is Action.ACK:
            self.ack(d.message)
            self.metrics.acked(d.binding.name)
        elif action is Action.RETRY:
            self._retry(d, outcome)
        elif action is Action.DEAD_LETTER:
            self._dead_letter(d, outcome)
        elif action is Action.COUNT:
            self._count(d)

    def received(self, message: Any) -> None:
        """A delivery came in: it is open until acked or rejected."""
        if self._batch:
            self._open.setdefault(message.channel, set()).add(message.delivery_tag)

    def ack(self, message: Any) -> None:
        """Ack ``message`` (at the next flush() when batching)."""
        self.stats.acked += 1
        if self._batch:
            self._to_ack.setdefault(message.channel, []).append(message.delivery_tag)
        else:
            message.ack()

    def reject(self, message: Any, requeue: bool) -> None:
        message.reject(requeue=requeue)
        if self._batch:
            self._open.get(message.channel, set()).discard(message.delivery_tag)

    def flush(self) -> None:
        """Send the collected acks: one multiple ack for the run below the oldest open
        delivery of each channel, single acks for the rest."""
        if not self._to_ack:
            return
        to_ack, self._to_ack = self._to_ack, {}
        for channel, tags in to_ack.items():
            if not getattr(channel, "is_open", True):
                # the broker closed this channel: it requeued these deliveries itself
                self._open.pop(channel, None)
                continue
            still_open = self._open.get(channel, set())
            still_open.difference_update(tags)
            oldest_open = min(still_open) if still_open else None
            tags.sort()
            below = tags if oldest_open is None else [t for t in tags if t < oldest_open]
            if below:
                channel.basic_ack(below[-1], multiple=True)
            for tag in tags[len(below):]:
                channel.basic_ack(tag)

    def _headers(self, d: Delivery) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
        m = d.message
        body = m.body if isinstance(m.body, bytes) else str(m.body).encode("utf-8", "surrogatepass")
        return body, dict(m.properties or {}), dict(m.headers or {})

    @staticmethod
    def _origin(d: Delivery) -> tuple[str, str]:
        info = d.message.delivery_info or {}
        return str(info.get("exchange", "")), str(info.get("routing_key", ""))

    def _retry(self, d: Delivery, outcome: Outcome) -> None:
        body, props, headers = self._headers(d)
        copy = failures.retry_copy(d.binding, d.queue, body, props, headers, outcome.reason,
                                   *self._origin(d))

        def done(ok: bool) -> None:
            if ok:
                self.ack(d.message)
                self.stats.retried += 1
                self.metrics.acked(d.binding.name)
                self.metrics.retried(d.binding.name)
            else:  # never requeue: a missing delay queue must not make a loop
                LOG.error("binding %s: the delay queue %s refused a retry of %s; rejecting "
                          "the message", d.binding.name, copy.routing_key, _what(d),
                          extra=log_fields(d.binding.name, d.request))
                self.reject(d.message, requeue=False)
                self.stats.rejected += 1
                self.metrics.rejected(d.binding.name)

        self._copies.publish(copy.exchange, copy.routing_key, copy.body, copy.properties,
                             copy.headers, done)

    def _dead_letter(self, d: Delivery, outcome: Outcome) -> None:
        body, props, headers = self._headers(d)
        copy = failures.dead_letter_copy(d.binding, d.queue, body, props, headers,
                                         outcome.reason, *self._origin(d))
        if copy is None:  # no parking lot of ours: the queue's own DLX, if any, applies
            self.reject(d.message, requeue=False)
            self.stats.rejected += 1
            self.stats.dead_lettered += 1
            self.metrics.rejected(d.binding.name)
            self.metrics.dead_lettered(d.binding.name)
            return

        def done(ok: bool) -> None:
            if ok:
                self.ack(d.message)
                self.stats.dead_lettered += 1
                self.metrics.acked(d.binding.name)
                self.metrics.dead_lettered(d.binding.name)
            else:
                LOG.error("binding %s: the parking lot refused a dead letter (%s); "
                          "rejecting the message instead", d.binding.name, _what(d),
                          extra=log_fields(d.binding.name, d.request))
                self.reject(d.message, requeue=False)
                self.stats.rejected += 1
                self.metrics.rejected(d.binding.name)

        self._copies.publish(copy.exchange, copy.routing_key, copy.body, copy.properties,
                             copy.headers, done)

    def _count(self, d: Delivery) -> None:
        body, props, headers = self._headers(d)
        copy = failures.count_copy(d.queue, body, props, headers, *self._origin(d))

        def done(ok: bool) -> None:
            if ok:
                self.ack(d.message)
                self.stats.counted += 1
                self.metrics.acked(d.binding.name)
            else:
                self.reject(d.message, requeue=True)
                self.metrics.rejected(d.binding.name)

        self._copies.publish(copy.exchange, copy.routing_key, copy.body, copy.properties,
                             copy.headers, done)

    # -- replies ----------------------------------------------------------------------

    def reply(self, reply: protocol.Reply) -> None:
        # mandatory, so that a vanished reply queue is reported (basic.return) — but
        # not for RabbitMQ direct reply-to, whose pseudo-queue always "returns"
        direct_reply_to = reply.routing_key.startswith(DIRECT_REPLY_TO)
        if self._raw_publish is not None:
            properties: dict[str, Any] = {"content_type": protocol.JSON,
                                          "content_encoding": "utf-8", "delivery_mode": 2}
            if reply.correlation_id is not None:
                properties["correlation_id"] = reply.correlation_id
            self._raw_publish(amqp.Message(reply.body, **properties), exchange="",
                              routing_key=reply.routing_key, mandatory=not direct_reply_to)
        else:
            self._producer.publish(
                reply.body, exchange="", routing_key=reply.routing_key,
                content_type=protocol.JSON, content_encoding="utf-8",
                correlation_id=reply.correlation_id, mandatory=not direct_reply_to,
                retry=False, delivery_mode=2,
            )
        self.stats.replies += 1

    def _on_reply_return(self, exc: BaseException, exchange: str, routing_key: str,
                         message: Any) -> None:
        self.stats.returned += 1
        props = getattr(message, "properties", None) or {}
        body = getattr(message, "body", b"")
        if isinstance(body, str):  # py-amqp decodes bodies that carry a content encoding
            body = body.encode("utf-8")
        reply = protocol.Reply(routing_key, bytes(body), props.get("correlation_id"))
        now = time.monotonic()
        for pending in self._returned:
            if pending.reply.routing_key == routing_key and pending.reply.body == reply.body:
                pending.due = now + pending.step
                return
        LOG.info("Reply to %r could not be routed (the caller's reply queue is gone or not "
                 "there yet): re-sending it for up to %g s", routing_key, REPLY_RETRY_TIMEOUT)
        self._returned.append(_ReturnedReply(reply, now + _REPLY_RETRY_FIRST,
                                             _REPLY_RETRY_FIRST, now + REPLY_RETRY_TIMEOUT))

    def resend_returned(self, now: float) -> float:
        """Re-send returned replies that are due; return seconds until the next is due."""
        if not self._returned:
            return _REPLY_RETRY_MAX_STEP
        wait = _REPLY_RETRY_MAX_STEP
        for pending in list(self._returned):
            if now >= pending.give_up:
                self._returned.remove(pending)
                LOG.warning("Reply to %r dropped: its queue did not come back within %g s",
                            pending.reply.routing_key, REPLY_RETRY_TIMEOUT)
                continue
            if now >= pending.due and not self.blocked:
                pending.step = min(pending.step * 2, _REPLY_RETRY_MAX_STEP)
                pending.due = now + pending.step
                self.reply(pending.reply)
            wait = min(wait, max(0.0, pending.due - now))
        return wait


def _what(d: Delivery) -> str:
    """The delivery as log lines name it (dispatcher.what), or ``a message that did not
    decode``."""
    return what(d.request) if d.request is not None else "a message that did not decode"
