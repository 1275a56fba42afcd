"""Reading a parking lot in order without disturbing it, and moving messages out of it.

A lot is read with ``basic.get`` (no auto-ack) on a channel of its own, one message
after the other, as many as it held when the walk began. What happens to a message the
command keeps depends on the queue type (both measured on RabbitMQ 3.10, see README):

- classic: nothing until the walk ends; closing the channel returns every unacked
  message to its original position, so the lot is left in order, and RabbitMQ keeps no
  delivery count on classic queues.
- quorum: a message returned to a quorum queue gets ``x-delivery-count`` + 1, which
  would push a lot with a ``delivery_limit`` (RabbitMQ 4's default is 20) towards
  dropping what it holds each time someone looks. So a kept message is *rotated*: a
  copy (body, properties and headers, without the broker's ``x-delivery-count``) is
  published to the tail of the lot, and the original is acked once the broker confirmed
  the copy. After a full walk the lot holds the same messages in the same order. A
  crash between the confirm and the ack leaves a duplicate in the lot, never a loss; a
  message parked while the walk runs lands among the rotated ones.

Copies (rotations, replays) are published on a second channel in confirm mode,
``mandatory``, up to ``WINDOW`` unconfirmed at a time: the original is acked only when
its copy is confirmed and was not returned. A copy that is returned or nacked leaves its
original parked and is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import amqp.exceptions

from rpcworker.amqp import transport
from rpcworker.client.connect import Session, broker_errors, exchange_exists
from rpcworker.client.exits import EXIT_BROKER, ClientError
from rpcworker.parking.lots import Lot
from rpcworker.parking.parked import Parked
from rpcworker.wire.xheaders import QUORUM_DELIVERY_COUNT, SEQ_HEADER

#: copies in flight before the reader waits for the broker's confirms
WINDOW = 256

#: ``on_done(p, None)`` once the copy of ``p`` is confirmed, ``on_done(p, why)`` if not
Done = Callable[[Parked, "str | None"], None]


@dataclasses.dataclass
class _Copy:
    original: Parked
    on_done: Done
    returned: str | None = None


class LotReader:
    """One walk over one lot; ``close()`` ends it (classic: the kept messages go back)."""

    def __init__(self, session: Session, lot: Lot, quorum: bool) -> None:
        self.session = session
        self.lot = lot
        self.rotate = quorum
        self._in: Any = self._reading_channel()
        self._out: Any = None
        self._tags: dict[int, int] = {}
        self._seq = 0
        self._inflight: dict[int, _Copy] = {}
        self._answered: list[tuple[_Copy, str | None]] = []
        #: messages moved out of the lot so far (their copies confirmed)
        self.moved = 0

    def _reading_channel(self) -> Any:
        """Bodies stay bytes, exactly as parked (py-amqp would decode a body that names
        its content_encoding)."""
        channel = self.session.conn.channel()
        transport.prepare_consuming_channel(channel)
        return channel

    def depth(self) -> int | None:
        """Messages ready in the lot now; None when the queue does not exist."""
        try:
            return int(self._in.queue_declare(queue=self.lot.queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            self._in = self._reading_channel()  # the 404 closed it
            return None

    def messages(self, depth: int) -> Iterator[Parked]:
        """The first ``depth`` messages, head first. Each is kept, removed or moved by
        the caller (classic: or simply left to close())."""
        for position in range(depth):
            self._settle_answered()
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
        self._publish(p, "", self.lot.queue, headers, self._rotated)

    def _rotated(self, p: Parked, failed: str | None) -> None:
        if failed is not None:
            raise ClientError(
                EXIT_BROKER,
                f"cannot keep message {p.position} of "
                f"{self.lot.queue} in place: {failed}; it was not removed "
                "(the lot may be out of order)",
            )
        self.remove(p)

    def remove(self, p: Parked) -> None:
        """Take ``p`` out of the lot (ack)."""
        self._in.basic_ack(self._tags.pop(p.position))

    def move(
        self,
        p: Parked,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
        on_failed: Callable[[Parked, str], None],
    ) -> None:
        """Publish a copy of ``p`` to ``exchange``/``routing_key``; remove ``p`` once the
        copy is confirmed, else keep it and tell ``on_failed(p, why)``."""

        def done(original: Parked, failed: str | None) -> None:
            if failed is None:
                self.remove(original)
                self.moved += 1
            else:
                on_failed(original, failed)
                self.keep(original)

        self._publish(p, exchange, routing_key, headers, done)

    def exchange_exists(self, name: str) -> bool:
        """The default exchange always does; others: a passive declare (session's)."""
        return not name or exchange_exists(self.session, name)

    # -- copies with pipelined confirms --------------------------------------------------

    def _publish(
        self, p: Parked, exchange: str, routing_key: str, headers: dict[str, Any], on_done: Done
    ) -> None:
        """A copy of ``p`` (its body and kept properties, ``headers``), confirmed later."""
        channel = self._channel()
        self._seq += 1
        message = amqp.Message(
            p.body, application_headers={**headers, SEQ_HEADER: self._seq}, **p.kept_properties()
        )
        self._inflight[self._seq] = _Copy(p, on_done)
        channel.basic_publish(message, exchange=exchange, routing_key=routing_key, mandatory=True)
        if len(self._inflight) >= WINDOW:
            self._wait(lambda: len(self._inflight) < WINDOW // 2)

    def _channel(self) -> Any:
        if self._out is None:
            channel = self.session.conn.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(lambda tag, multiple: self._answer(tag, multiple, None))
            channel.events["basic_nack"].add(
                lambda tag, multiple: self._answer(
                    tag, multiple, "the broker refused it (basic.nack)"
                )
            )
            channel.events["basic_return"].add(self._on_return)
            self._out = channel
        return self._out

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        headers = (getattr(message, "properties", None) or {}).get("application_headers") or {}
        copy = self._inflight.get(headers.get(SEQ_HEADER))  # type: ignore[arg-type]
        if copy is not None:
            copy.returned = (
                f"unroutable: no queue is bound to exchange "
                f"{exchange or '(default)'!s} for routing key {routing_key!r}"
            )

    def _answer(self, tag: int, multiple: bool, failed: str | None) -> None:
        """A confirm (called while py-amqp reads): noted, carried out by
        _settle_answered() outside the read."""
        for seq in sorted(s for s in self._inflight if (s <= tag if multiple else s == tag)):
            copy = self._inflight.pop(seq)
            self._answered.append((copy, failed or copy.returned))

    def _settle_answered(self) -> None:
        while self._answered:
            copy, failed = self._answered.pop(0)
            copy.on_done(copy.original, failed)

    def _wait(self, enough: Callable[[], bool]) -> None:
        deadline = time.monotonic() + max(self.session.timeout, 10.0)
        while not enough():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(
                    EXIT_BROKER,
                    f"no publisher confirm from the broker "
                    f"for {len(self._inflight)} message(s) in "
                    f"{max(self.session.timeout, 10.0):g}s; they stay parked",
                )
            with contextlib.suppress(TimeoutError):
                self.session.conn.drain_events(timeout=min(left, 1.0))
        self._settle_answered()

    def flush(self) -> None:
        """Wait for every copy in flight and carry out what follows (acks, rotations)."""
        while self._inflight or self._answered:
            self._wait(lambda: not self._inflight)

    def close(self) -> None:
        """End the walk: what is still unacked goes back to the lot (classic: in place)."""
        for channel in (self._out, self._in):
            if channel is not None and channel.is_open:
                with contextlib.suppress(*broker_errors(self.session.conn)):
                    channel.close()
        self._out = None
