"""Acks and rejects of one connection, batched on py-amqp.

Acks are collected during a loop iteration and sent by ``flush()``: a run of settled
deliveries below the oldest delivery still open on a channel goes as ONE ``basic.ack``
with ``multiple=True``, the rest one by one. Acks still go only after the handler (or
the confirmed copy) is done. Virtual transports (memory://, filesystem://) ack one by
one at once. Loop thread only.
"""

from __future__ import annotations

from typing import Any


class Acks:
    def __init__(self, batch: bool) -> None:
        self._batch = batch
        self._open: dict[Any, set[int]] = {}  # channel -> delivered, not yet settled
        self._to_ack: dict[Any, list[int]] = {}  # channel -> settled as ack, not sent

    def received(self, message: Any) -> None:
        """A delivery came in: it is open until acked or rejected."""
        if self._batch:
            self._open.setdefault(message.channel, set()).add(message.delivery_tag)

    def ack(self, message: Any) -> None:
        """Ack ``message`` (at the next flush() when batching)."""
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
            for tag in tags[len(below) :]:
                channel.basic_ack(tag)
