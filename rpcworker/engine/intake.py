"""Each delivery, as it arrives: decode it, ask the policy once, then settle it at once
or hand it to a handler thread. Loop thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oslo_config import cfg

from rpcworker.amqp import transport
from rpcworker.engine.budget import Budget
from rpcworker.engine.events import Listener
from rpcworker.engine.inflight import Inflight
from rpcworker.engine.settle import Settle
from rpcworker.engine.streams import Streams
from rpcworker.engine.telling import Teller
from rpcworker.policy.decisions import duplicate, on_receipt
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.outcomes import ACK_THEN_RUN, RUN, Delivery, Outcome
from rpcworker.wire.decoding import Request, as_notification, decode

if TYPE_CHECKING:
    from rpcworker.engine.subscriptions import Subscription


class Intake:
    def __init__(
        self,
        conf: cfg.ConfigOpts,
        inflight: Inflight,
        completed: CompletedCache,
        events: Listener,
        budget: Budget,
        teller: Teller,
        streams: Streams | None = None,
    ) -> None:
        self.inflight = inflight
        self.budget = budget
        self.completed = completed
        self.events = events
        self.teller = teller
        self.streams = streams or Streams()
        self.max_size = conf.max_message_size
        #: the current connection's (None while disconnected)
        self.settle: Settle | None = None
        #: a stop is under way: deliveries go back to their queue
        self.draining = False

    def on_message(self, sub: Subscription, message: Any) -> None:
        binding = sub.binding
        self.events.received(binding.name)
        settle = self.settle
        assert settle is not None
        settle.received(message)
        body = message.body
        size = len(body)
        self.budget.take(size)
        info = transport.delivery_info(message)
        if self.teller.debug:
            self.teller.received(binding, sub.queue, message, info)
        decoded = decode(
            body,
            message.content_type,
            message.content_encoding,
            message.headers,
            message.properties,
            info,
            self.max_size,
        )
        if binding.type == "notification" and isinstance(decoded, Request):
            decoded = as_notification(decoded)
        request = decoded if isinstance(decoded, Request) else None
        d = Delivery(message, binding, sub.queue, request, sub.retryable, size)
        decision = on_receipt(binding, decoded, sub.handler, self.completed, draining=self.draining)
        if decision is RUN:
            self.inflight.start(d, sub.handler)
        elif decision is ACK_THEN_RUN:
            settle.ack_now(d)
            self.inflight.start(d, sub.handler)
        else:
            assert isinstance(decision, Outcome)
            settle.settle(d, decision)

    def on_stream_message(self, sub: Subscription, message: Any) -> None:
        """A delivery from a stream (``rabbit_stream_fanout``): one this process had
        before (a consumer started again after a lost connection) is acked unrun."""
        if self.streams.take(sub.queue, message):
            self.on_message(sub, message)
            return
        self.events.received(sub.binding.name)
        settle = self.settle
        assert settle is not None
        settle.received(message)
        d = Delivery(message, sub.binding, sub.queue, None, False, len(message.body))
        self.budget.take(d.size)
        settle.settle(d, duplicate(None))
