"""Publishing with publisher confirms, without blocking the loop.

A copy (retry, dead letter, redelivery count) must be safe on the broker before
the original delivery is acked. ``ConfirmPublisher`` publishes on its own
channel in confirm mode and calls ``on_done(ok)`` when the broker acks (ok) or
nacks/returns (not ok) the copy. Loop thread only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

from rpcworker.amqp import transport
from rpcworker.wire.xheaders import SEQ_HEADER

LOG = logging.getLogger(__name__)


class ConfirmPublisher:
    def __init__(self, channel: Any, confirms: bool) -> None:
        """``confirms``: the transport has publisher confirms (py-amqp); on virtual
        transports a copy counts as accepted once published."""
        self.channel = channel
        self._pending: dict[int, Callable[[bool], None]] = {}
        self._returned: set[int] = set()
        self._seq = itertools.count(1)
        self.async_confirms = confirms
        self._publish: transport.Publish = (
            transport.publisher(channel)
            if confirms
            else lambda message, exchange, key, mandatory: channel.basic_publish(
                message, exchange=exchange, routing_key=key, mandatory=mandatory
            )
        )
        if confirms:
            channel.confirm_select()
            events = channel.events
            events["basic_ack"].add(self._on_ack)
            events["basic_nack"].add(self._on_nack)
            events["basic_return"].add(self._on_return)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: dict[str, Any],
        headers: dict[str, Any],
        on_done: Callable[[bool], None],
    ) -> None:
        """Publish a persistent, mandatory copy; ``on_done(ok)`` once the broker answers."""
        seq = next(self._seq)
        headers = dict(headers)
        headers[SEQ_HEADER] = seq
        message = self.channel.prepare_message(
            body,
            properties.get("priority"),
            properties.get("content_type"),
            properties.get("content_encoding"),
            headers,
            {
                k: v
                for k, v in properties.items()
                if k not in ("priority", "content_type", "content_encoding")
            },
        )
        self._pending[seq] = on_done
        try:
            self._publish(message, exchange, routing_key, self.async_confirms)
        except Exception:
            self._pending.pop(seq, None)
            raise
        if not self.async_confirms:  # virtual transports: accepted once published
            self._done(seq, True)

    def _done(self, seq: int, ok: bool) -> None:
        callback = self._pending.pop(seq, None)
        returned = seq in self._returned
        self._returned.discard(seq)
        if callback is not None:
            callback(ok and not returned)

    def _settle(self, tag: int, multiple: bool, ok: bool) -> None:
        seqs = [s for s in self._pending if s <= tag] if multiple else [tag]
        for seq in sorted(seqs):
            self._done(seq, ok)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        LOG.warning(
            "The broker refused (nack) %s republished message(s)", "several" if multiple else "a"
        )
        self._settle(delivery_tag, multiple, False)

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        headers = (getattr(message, "properties", None) or {}).get("application_headers") or {}
        seq = headers.get(SEQ_HEADER)
        LOG.error(
            "A republished message to exchange %r with routing key %r could not be "
            "routed (%s): no queue is bound for it",
            exchange,
            routing_key,
            exc,
        )
        if isinstance(seq, int):
            self._returned.add(seq)
