"""Reading a parking lot in order without disturbing it, and taking messages out of it.

A lot is read with ``basic.get`` (no auto-ack) on a channel of its own, one message
after the other, as many as it held when the walk began. What happens to a message the
command keeps depends on the queue type (both measured on RabbitMQ 3.10, see README):

- classic: nothing until the walk ends; closing the channel returns every unacked
  message to its original position, so the lot is left in order, and RabbitMQ keeps no
  delivery count on classic queues.
- quorum: a message returned to a quorum queue gets ``x-delivery-count`` + 1, which
  would push a lot with a ``delivery_limit`` (RabbitMQ 4's default is 20) towards
  dropping what it holds each time someone looks. So a kept message is *rotated*: an
  exact copy (body, properties, headers; without the broker's ``x-delivery-count``) is
  published to the tail of the lot with publisher confirms, then the original is acked.
  After a full walk the lot holds the same messages in the same order. A crash between
  the confirm and the ack leaves a duplicate in the lot, never a loss; a message parked
  while the walk runs lands among the rotated ones.

A message taken out (replayed, purged) is acked once its copy elsewhere is confirmed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import amqp
import amqp.exceptions

from rpcworker.client.errors import EXIT_BROKER, ClientError
from rpcworker.client.lots import Lot
from rpcworker.client.session import Session, broker_errors
from rpcworker.failures import QUORUM_DELIVERY_COUNT
from rpcworker.parked import PROPERTIES, Parked


class LotReader:
    """One walk over one lot; ``close()`` ends it (classic: the kept messages go back)."""

    def __init__(self, session: Session, lot: Lot, quorum: bool) -> None:
        self.session = session
        self.lot = lot
        self.rotate = quorum
        self._in: Any = session.conn.channel()
        self._out: Any = None
        self._tags: dict[int, int] = {}
        self._returned: list[str] = []

    def depth(self) -> int | None:
        """Messages ready in the lot now; None when the queue does not exist."""
        try:
            return int(self._in.queue_declare(queue=self.lot.queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            self._in = self.session.conn.channel()  # the 404 closed it
            return None

    def messages(self, depth: int) -> Iterator[Parked]:
        """The first ``depth`` messages, head first. Each must be kept, removed or
        left to close() (classic only) before the next is asked for."""
        for position in range(depth):
            msg = self._in.basic_get(queue=self.lot.queue, no_ack=False)
            if msg is None:  # someone else took the rest
                return
            self._tags[position] = msg.delivery_tag
            props = dict(msg.properties)
            headers = dict(props.pop("application_headers", None) or {})
            yield Parked(self.lot.queue, position, bytes(msg.body), props, headers)

    def keep(self, p: Parked) -> None:
        """Leave ``p`` in the lot (quorum: rotated to the tail, see the module doc)."""
        if not self.rotate:
            return
        headers = {k: v for k, v in p.headers.items() if k != QUORUM_DELIVERY_COUNT}
        failed = self.publish(p, "", self.lot.queue, headers, {**p.properties})
        if failed is not None:
            raise ClientError(EXIT_BROKER, f"cannot keep message {p.position} of "
                              f"{self.lot.queue} in place: {failed}; it was not removed "
                              "(the lot may be out of order)")
        self.remove(p)

    def remove(self, p: Parked) -> None:
        """Take ``p`` out of the lot (ack)."""
        self._in.basic_ack(self._tags.pop(p.position))

    def publish(self, p: Parked, exchange: str, routing_key: str, headers: dict[str, Any],
                properties: dict[str, Any] | None = None) -> str | None:
        """Publish a copy of ``p`` with confirms and ``mandatory``: None once the broker
        confirmed it and routed it to a queue, else why not."""
        props = {k: v for k, v in (properties if properties is not None
                                   else p.kept_properties()).items()
                 if k in PROPERTIES and v is not None}
        message = amqp.Message(p.body, application_headers=headers, **props)
        channel = self._channel()
        self._returned.clear()
        try:
            channel.basic_publish_confirm(message, exchange=exchange, routing_key=routing_key,
                                          mandatory=True,
                                          confirm_timeout=self.session.timeout)
        except amqp.exceptions.MessageNacked:
            return "the broker refused it (basic.nack)"
        except amqp.exceptions.ChannelError as exc:  # 404 no exchange, 403, ...
            self._out = None
            return f"{exc.reply_text or exc}"
        if self._returned:
            return self._returned[0]
        return None

    def _channel(self) -> Any:
        if self._out is None:
            self._out = self.session.conn.channel()
            self._out.events["basic_return"].add(self._on_return)
        return self._out

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(f"unroutable: exchange {exchange!r} has no queue bound for "
                              f"routing key {routing_key!r} ({getattr(exc, 'reply_text', exc)})")

    def close(self) -> None:
        """End the walk: the kept messages of a classic lot go back where they were."""
        for channel in (self._out, self._in):
            if channel is not None and channel.is_open:
                with contextlib.suppress(*broker_errors(self.session.conn)):
                    channel.close()
        self._out = None
