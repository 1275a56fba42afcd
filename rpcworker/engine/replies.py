"""Replies of one connection: published on the default exchange, and re-sent when the
broker returns them.

Replies are mandatory, so that a vanished reply queue comes back as ``basic.return``;
a returned reply is re-sent with backoff for up to ``REPLY_RETRY_TIMEOUT`` (as
oslo.messaging's ``kombu_missing_consumer_retry_timeout``), then dropped with a log line.
Not for RabbitMQ direct reply-to, whose pseudo-queue always "returns". Loop thread only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import amqp
import kombu
from oslo_log import log as logging

from rpcworker.amqp import transport
from rpcworker.amqp.transport import Capabilities
from rpcworker.wire import envelope, replyformat

LOG = logging.getLogger(__name__)

#: RabbitMQ's direct reply-to pseudo-queue prefix
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: how long a returned reply is re-sent (oslo's kombu_missing_consumer_retry_timeout)
REPLY_RETRY_TIMEOUT = 60.0
_REPLY_RETRY_FIRST = 0.25
_REPLY_RETRY_MAX_STEP = 5.0

_PROPERTIES = {"content_type": envelope.JSON, "content_encoding": "utf-8", "delivery_mode": 2}


@dataclasses.dataclass
class _Returned:
    reply: replyformat.Reply
    due: float
    step: float
    give_up: float


class Replies:
    def __init__(self, conn: kombu.Connection, caps: Capabilities) -> None:
        channel = conn.default_channel
        # py-amqp: straight to basic.publish, as kombu's Producer.publish costs more than
        # the rest of a small reply's trip through the worker
        self._basic_publish = transport.publisher(channel) if caps.amqp else None
        self._producer = kombu.Producer(
            channel, auto_declare=False, on_return=self._on_return if caps.returns else None
        )
        self._returned: list[_Returned] = []

    def publish(self, reply: replyformat.Reply) -> None:
        mandatory = not reply.routing_key.startswith(DIRECT_REPLY_TO)
        if self._basic_publish is not None:
            properties: dict[str, Any] = dict(_PROPERTIES)
            if reply.correlation_id is not None:
                properties["correlation_id"] = reply.correlation_id
            self._basic_publish(
                amqp.Message(reply.body, **properties), "", reply.routing_key, mandatory
            )
            return
        self._producer.publish(
            reply.body,
            exchange="",
            routing_key=reply.routing_key,
            correlation_id=reply.correlation_id,
            mandatory=mandatory,
            retry=False,
            **_PROPERTIES,
        )

    def _on_return(self, exc: BaseException, exchange: str, routing_key: str, message: Any) -> None:
        props = getattr(message, "properties", None) or {}
        body = getattr(message, "body", b"")
        if isinstance(body, str):  # py-amqp decodes bodies that carry a content encoding
            body = body.encode("utf-8")
        reply = replyformat.Reply(routing_key, bytes(body), props.get("correlation_id"))
        now = time.monotonic()
        for pending in self._returned:
            if pending.reply.routing_key == routing_key and pending.reply.body == reply.body:
                pending.due = now + pending.step
                return
        LOG.info(
            "Reply to %r could not be routed (the caller's reply queue is gone or not "
            "there yet): re-sending it for up to %g s",
            routing_key,
            REPLY_RETRY_TIMEOUT,
        )
        self._returned.append(
            _Returned(
                reply, now + _REPLY_RETRY_FIRST, _REPLY_RETRY_FIRST, now + REPLY_RETRY_TIMEOUT
            )
        )

    def resend_returned(self, now: float, blocked: bool = False) -> float:
        """Re-send returned replies that are due (not while ``blocked``); return seconds
        until the next is due."""
        if not self._returned:
            return _REPLY_RETRY_MAX_STEP
        wait = _REPLY_RETRY_MAX_STEP
        for pending in list(self._returned):
            if now >= pending.give_up:
                self._returned.remove(pending)
                LOG.warning(
                    "Reply to %r dropped: its queue did not come back within %g s",
                    pending.reply.routing_key,
                    REPLY_RETRY_TIMEOUT,
                )
                continue
            if now >= pending.due and not blocked:
                pending.step = min(pending.step * 2, _REPLY_RETRY_MAX_STEP)
                pending.due = now + pending.step
                self.publish(pending.reply)
            wait = min(wait, max(0.0, pending.due - now))
        return wait
