"""Carries out outcomes on one connection: has the teller log what happened, publishes
the reply, then the ack, reject or confirmed copy; then tells the listeners. Decides
nothing: ``decisions.resolve`` says what an outcome becomes on this queue, and a copy
the broker refuses goes back to the policy (``on_copy_refused``) for the outcome carried
out instead. Loop thread only; one ``Settle`` per connection.

* copies (retry, dead letter, redelivery count) go on a confirm-mode channel and the
  original is acked only once the broker has confirmed the copy;
* while the broker has the connection blocked (memory or disk alarm) nothing is
  published: settlements that need a publish wait and go out on unblock.
"""

from __future__ import annotations

from typing import Any

import kombu
from oslo_log import log as logging

from rpcworker.amqp.transport import Capabilities
from rpcworker.engine.acks import Acks
from rpcworker.engine.events import Listener
from rpcworker.engine.publisher import ConfirmPublisher
from rpcworker.engine.replies import Replies
from rpcworker.engine.telling import Teller
from rpcworker.policy import decisions, failures
from rpcworker.policy.outcomes import COPIES, Action, Delivery, Outcome
from rpcworker.wire import replyformat

LOG = logging.getLogger(__name__)


class Settle:
    def __init__(
        self, conn: kombu.Connection, caps: Capabilities, events: Listener, teller: Teller
    ) -> None:
        self.events = events
        self.teller = teller
        self.blocked = False
        self.acks = Acks(batch=caps.amqp)
        self.replies = Replies(conn, caps)
        self._copies = ConfirmPublisher(conn.channel(), confirms=caps.amqp)
        self._deferred: list[tuple[Delivery, Outcome]] = []

    @property
    def pending(self) -> int:
        """Copies not yet confirmed and settlements waiting for an unblock."""
        return self._copies.pending + len(self._deferred)

    def received(self, message: Any) -> None:
        self.acks.received(message)

    def flush(self) -> None:
        self.acks.flush()

    # -- the switch -----------------------------------------------------------------------

    def settle(self, d: Delivery, outcome: Outcome) -> None:
        """Tell what happened, publish the reply (if any), then carry out the resolved
        outcome."""
        outcome = decisions.resolve(d, outcome)
        if outcome.notes or outcome.refusal is not None:
            self.teller.tell(d, outcome)
        self._carry_out(d, outcome)

    def _carry_out(self, d: Delivery, outcome: Outcome) -> None:
        action = outcome.action
        if action is Action.DROP:
            return
        if self.blocked and (outcome.reply is not None or action in COPIES):
            self._deferred.append((d, outcome))
            return
        if outcome.reply is not None:
            self.replies.publish(outcome.reply)
        if action in COPIES:
            self._copy(d, outcome)
            return
        if action is Action.ACK:
            self.acks.ack(d.message)
        elif action is Action.REJECT or action is Action.REQUEUE:
            self.acks.reject(d.message, requeue=action is Action.REQUEUE)
        self.events.settled(d, outcome)

    def ack_now(self, d: Delivery) -> None:
        """``acknowledge = before``: the ack must be on the wire before the handler can
        run (and perhaps take the process down), so it is not left for the batched
        flush. The delivery is settled, with ``Action.NONE``, when its handler is done."""
        self.acks.ack(d.message)
        self.acks.flush()

    def reply(self, reply: replyformat.Reply) -> None:
        """A reply outside any settlement (an oslo call-monitor heartbeat)."""
        self.replies.publish(reply)

    def resend_returned(self, now: float) -> float:
        return self.replies.resend_returned(now, self.blocked)

    def _copy(self, d: Delivery, outcome: Outcome) -> None:
        copy = _copy_of(d, outcome)

        def done(ok: bool) -> None:
            if ok:
                self.acks.ack(d.message)
                self.events.settled(d, outcome)
            else:
                self.settle(d, decisions.on_copy_refused(d, outcome, copy.routing_key))

        self._copies.publish(
            copy.exchange, copy.routing_key, copy.body, copy.properties, copy.headers, done
        )

    # -- flow control ---------------------------------------------------------------------

    def on_blocked(self, reason: str) -> None:
        self.blocked = True
        LOG.warning(
            "The broker blocked the connection (%s): replies and republishing "
            "wait until it unblocks",
            reason,
        )

    def on_unblocked(self) -> None:
        self.blocked = False
        deferred, self._deferred = self._deferred, []
        LOG.warning(
            "The broker unblocked the connection; sending %d deferred settlement(s)", len(deferred)
        )
        for delivery, outcome in deferred:
            self._carry_out(delivery, outcome)


def _copy_of(d: Delivery, outcome: Outcome) -> failures.Copy:
    """The copy that carries ``d`` to its delay queue, parking lot or queue tail."""
    m = d.message
    body = m.body if isinstance(m.body, bytes) else str(m.body).encode("utf-8", "surrogatepass")
    props, headers = dict(m.properties or {}), dict(m.headers or {})
    info = m.delivery_info or {}
    exchange, key = str(info.get("exchange", "")), str(info.get("routing_key", ""))
    if outcome.action is Action.RETRY:
        return failures.retry_copy(
            d.binding, d.queue, body, props, headers, outcome.reason, exchange, key
        )
    if outcome.action is Action.COUNT:
        return failures.count_copy(d.queue, body, props, headers, exchange, key)
    copy = failures.dead_letter_copy(
        d.binding, d.queue, body, props, headers, outcome.reason, exchange, key
    )
    assert copy is not None, "decisions.resolve rejects dead letters without a parking lot"
    return copy
