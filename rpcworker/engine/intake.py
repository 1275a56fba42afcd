"""Each delivery, as it arrives: decode it, ask the policy once, then settle it at once
or hand it to a handler thread. Loop thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.amqp import transport
from rpcworker.config.bindingconf import Binding
from rpcworker.engine import ratelimit
from rpcworker.engine.budget import Budget
from rpcworker.engine.events import Listener
from rpcworker.engine.inflight import Inflight
from rpcworker.engine.settle import Settle
from rpcworker.policy import decisions
from rpcworker.policy.decisions import Delivery
from rpcworker.policy.dedup import CompletedCache
from rpcworker.wire import decoding
from rpcworker.wire.logfields import describe, id_text, log_fields, message_ids, printable

if TYPE_CHECKING:
    from rpcworker.engine.subscriptions import Subscription

LOG = logging.getLogger(__name__)


class Intake:
    def __init__(self, conf: cfg.ConfigOpts, inflight: Inflight, completed: CompletedCache,
                 events: Listener, budget: Budget) -> None:
        self.inflight = inflight
        self.budget = budget
        self.completed = completed
        self.events = events
        self.refusals = Refusals()
        self.max_size = conf.max_message_size
        #: the current connection's (None while disconnected)
        self.settle: Settle | None = None
        #: a stop is under way: deliveries go back to their queue
        self.draining = False
        self.debug = LOG.isEnabledFor(logging.DEBUG)

    def debug_changed(self) -> None:
        """The log level may have changed (SIGHUP): the debug line per delivery follows."""
        self.debug = LOG.isEnabledFor(logging.DEBUG)

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
        if self.debug:
            LOG.debug("binding %s: delivery %s on %s from exchange %r, routing key %r%s%s",
                      binding.name, info.get("delivery_tag"), sub.queue, info.get("exchange"),
                      info.get("routing_key"), id_text(message_ids(message, None)),
                      " (redelivered)" if info["redelivered"] else "",
                      extra={"binding": binding.name, **message_ids(message, None)})
        decoded = decoding.decode(body, message.content_type, message.content_encoding,
                                  message.headers, message.properties, info, self.max_size)
        if binding.type == "notification" and isinstance(decoded, decoding.Request):
            decoded = decoding.as_notification(decoded)
        request = decoded if isinstance(decoded, decoding.Request) else None
        d = Delivery(message, binding, sub.queue, request, sub.retryable, size)
        decision = decisions.on_receipt(binding, decoded, sub.handler, self.completed,
                                     draining=self.draining)
        if decision is decisions.RUN:
            self.inflight.start(d, sub.handler)
        elif decision is decisions.ACK_THEN_RUN:
            settle.ack_now(d)
            self.inflight.start(d, sub.handler)
        else:
            assert isinstance(decision, decisions.Outcome)
            if decision.refusal is not None:
                self.refusals.log(binding, message, decision.refusal, request)
            settle.settle(d, decision)


class Refusals:
    """The "message refused" lines: one per refused delivery, at most 10 per binding in
    10 s (``ratelimit.LogLimiter``), then one summary line per window."""

    def __init__(self, limiter: ratelimit.LogLimiter | None = None) -> None:
        self.limiter = limiter or ratelimit.LogLimiter()

    def log(self, binding: Binding, message: Any, reason: str,
            request: decoding.Request | None = None) -> None:
        self.summarise()
        if self.limiter.admit(binding.name, reason):
            LOG.warning("binding %s: message %s refused: %s", binding.name,
                        describe(message, request), printable(reason),
                        extra={**log_fields(binding.name, request),
                               **message_ids(message, request)})

    def summarise(self, final: bool = False) -> None:
        """The lines held back in windows that are over (all of them: ``final``)."""
        for s in self.limiter.pending() if final else self.limiter.expired():
            LOG.warning("binding %s: %d more messages refused in the last %g s (last "
                        "reason: %s)", s.key, s.count, s.interval, s.last_reason)
