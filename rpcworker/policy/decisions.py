"""The ack policy: the one place that turns (binding, request, what happened) into an
``Outcome`` — ack, retry, dead-letter, count, reject or requeue. Nothing else decides,
and nothing here logs: an outcome carries ``Note``s of what happened, which the
engine's teller words and logs once (deciding apart from telling).

A delivery passes it twice: ``on_receipt()`` (the intake asks before anything runs)
and ``on_completion()`` (the handler thread asks with what the handler returned or
raised). ``on_completed()`` (the loop, when a result comes back), ``timed_out()``,
``resolve()`` (what settle can carry out on this queue) and ``on_copy_refused()`` (a
retry / dead-letter / count copy the broker refused) close every other path. Settle
only carries out what it is given.

The policy (``acknowledge = after``, the default, at-least-once):

===========================================  ==============  ============================
what happened                                action          reply (calls only)
===========================================  ==============  ============================
handler returned                             ack             the result
handler raised anything, call                ack             the error (the caller has
                                                             its answer; never retried)
handler raised ``Requeue`` or anything       retry, or       -
else, cast/event                             dead-letter
                                             once max_retries
                                             retries are spent
handler raised ``Reject``                    dead-letter     the error
no such method / version, cast (on receipt)  dead-letter     (call: ack + the error)
event and no ``handle_message``              dead-letter     -
handler ran ``handler_timeout`` past start   as a failure    HandlerTimeout
redelivered more than ``max_redeliveries``   dead-letter     PoisonMessage
quorum, ``x-delivery-count`` >= ``delivery_  dead-letter     PoisonMessage
limit`` (the broker's last delivery)
redelivered (classic queue), within bounds   count           - (runs when it comes back)
already completed (duplicate id)             ack             the remembered reply
refused before dispatch (bad message)        dead-letter     the error, when routable
notification handler returned ``"requeue"``  retry, or       -
                                             dead-letter
notification its filters do not match        ack             - (not run)
received while the worker drains (stop)      requeue         -
its connection was lost before it settled    drop            - (the broker redelivers it)
===========================================  ==============  ============================

``retry``: a copy goes to the binding's delay queue for that attempt (it comes
back after ``retry_delay`` doubling up to ``retry_delay_max``) with header
``x-rpcworker-retries``, then the original is acked; a queue without delay queues
(exclusive, or a transport without TTL) dead-letters instead. ``dead-letter``: a
copy goes to the binding's parking lot (``dead_letter_exchange``/``dead_letter_queue``)
with the reason in its headers, then the original is acked; with no parking lot
configured it is rejected without requeue (``reject``: the queue's own dead-letter
exchange, if any, applies). ``count``: a copy with ``x-rpcworker-redeliveries``
incremented goes to the tail of the same queue, then the original is acked, so crash
loops are counted on classic queues (quorum queues count with ``x-delivery-count``).
A copy the broker refuses makes the original rejected without requeue (a count copy:
requeued), never looping. No outcome makes a message loop forever.

Quorum queues with ``x-delivery-limit`` L (``delivery_limit``): measured on RabbitMQ
3.10, the broker makes L + 1 deliveries of a message that is rejected with requeue or
whose channel closes unacked, with ``x-delivery-count`` 0, 1, ..., L; when the last one
comes back it drops the message (or dead-letters it to the queue's
``x-dead-letter-exchange``, reason ``delivery_limit``). So the delivery with count L is
never run: it is dead-lettered by us, with its reason, while we still hold it. With
``max_redeliveries`` M too, the bound is the smaller one: a redelivery with count
``c`` runs while ``c <= min(M or infinity, L - 1)``.

With ``acknowledge = before`` the delivery is acked on receipt (at-most-once, as
oslo.messaging's RPC server does): the action is ``none`` whatever happens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rpcworker.config import handlerapi
from rpcworker.config.bindingconf import Binding
from rpcworker.errors import (
    DispatchError,
    HandlerTimeout,
    NoHandleMessage,
    NoSuchMethod,
    PoisonMessage,
    Reject,
    Requeue,
    UnsupportedVersion,
)
from rpcworker.policy import filters
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.dispatcher import unknown
from rpcworker.policy.outcomes import (
    ACK_THEN_RUN,
    RUN,
    Action,
    Delivery,
    Happened,
    Note,
    Outcome,
    Start,
)
from rpcworker.wire.decoding import Rejected, Request
from rpcworker.wire.logfields import what
from rpcworker.wire.replyformat import Reply, encode_error, encode_failure, encode_result
from rpcworker.wire.xheaders import (
    QUORUM_DELIVERY_COUNT,
    REDELIVERIES_HEADER,
    int_header,
    retries_of,
)

#: the error type (and module) a caller gets for a request refused before dispatch
REFUSED_TYPE, REFUSED_MODULE = "InvalidRequest", "rpcworker.errors"

_ACKED, _DONE, _DROPPED, _REQUEUED = (
    Outcome(Action.ACK),
    Outcome(Action.NONE),
    Outcome(Action.DROP),
    Outcome(Action.REQUEUE),
)
_FILTERED = Outcome(Action.ACK, filtered=True)
#: what a notification handler returns to ask for a retry (oslo's NotificationResult)
REQUEUE_RESULT = "requeue"


# -- on receipt ---------------------------------------------------------------------------


def on_receipt(
    binding: Binding,
    decoded: Request | Rejected,
    handler: Any,
    completed: CompletedCache,
    *,
    draining: bool,
) -> Outcome | Start:
    """Everything decided before a handler runs, in order: stopping, undecodable,
    poison or a redelivery to count, a duplicate, an unknown method; else it runs
    (acked first with ``acknowledge = before``)."""
    if draining:
        return _REQUEUED  # a stopping worker takes no new work: back to the queue
    if isinstance(decoded, Rejected):
        return refused(decoded)
    early = redelivered(binding, decoded)
    if early is not None:
        return early
    uid = decoded.unique_id
    if uid and uid in completed:
        return duplicate(completed.get(uid))
    if decoded.notification is not None:
        early = _screened(binding, decoded, handler)
        if early is not None:
            return early
    error = unknown(handler, decoded)
    if error is not None:
        return unknown_method(decoded, error)
    return ACK_THEN_RUN if binding.ack_before else RUN


def _screened(binding: Binding, request: Request, handler: Any) -> Outcome | None:
    """A notification its handler has no method for (as oslo: acked, a warning), or one
    the binding's filters keep from it (acked). None: run it."""
    n = request.notification
    assert n is not None
    if not handlerapi.has_method(type(handler), n.priority):
        return Outcome(
            Action.ACK,
            reason=f"no handler method for priority {n.priority!r}",
            notes=(Note(Happened.NO_PRIORITY_METHOD, n.priority or "<priority>"),),
        )
    if not filters.matches(binding, n):
        return _FILTERED
    return None


def refused(rejected: Rejected) -> Outcome:
    """A delivery that ``decoding.decode`` refused: never run, dead-lettered; a caller
    that waits gets the error."""
    reply = None
    if rejected.reply is not None:
        reply = encode_error(rejected.reply, REFUSED_TYPE, REFUSED_MODULE, rejected.reason)
    return Outcome(
        Action.DEAD_LETTER, reply, f"refused: {rejected.reason}", refusal=rejected.reason
    )


def unknown_method(request: Request, error: DispatchError) -> Outcome:
    """A request for a method or version the handler does not have: refused before any
    receipt ack and never run (a cast is dead-lettered, a call acked and answered with
    the error)."""
    reply = encode_failure(request.reply, error) if request.reply else None
    action = Action.ACK if request.is_call else Action.DEAD_LETTER
    reason = f"{type(error).__name__}: {error}"
    return Outcome(action, reply, reason, refusal=reason)


def duplicate(reply: Reply | None) -> Outcome:
    """A request whose id already completed: not run again; a call gets the same reply.

    Decided before any receipt ack, so it is acked here whatever ``acknowledge`` says."""
    return Outcome(Action.ACK, reply, notes=(Note(Happened.DUPLICATE),))


def limited_by_delivery_limit(binding: Binding) -> bool:
    """Whether the quorum queue's delivery_limit, not max_redeliveries, bounds the
    redeliveries that are run (the smaller bound wins; max_redeliveries 0 is off)."""
    limit, most = binding.delivery_limit, binding.max_redeliveries
    return bool(limit) and (not most or limit - 1 < most)


def redelivery_bound(binding: Binding) -> int | None:
    """The most redeliveries of one message that are run on a quorum binding (None: no
    bound): max_redeliveries (0 = off) or, with delivery_limit L > 0, L - 1 when smaller,
    since the broker's last delivery (x-delivery-count L) is dead-lettered, not run."""
    if limited_by_delivery_limit(binding):
        return binding.delivery_limit - 1
    return binding.max_redeliveries or None


def redelivered(binding: Binding, request: Request) -> Outcome | None:
    """A poison message, or a redelivery to count. None: run it."""
    if binding.ack_before or not request.redelivered:
        return None
    headers = request.headers or {}
    if binding.quorum and QUORUM_DELIVERY_COUNT in headers:
        count = int_header(headers, QUORUM_DELIVERY_COUNT)
        bound = redelivery_bound(binding)
        if bound is None or count <= bound:
            return None
        if limited_by_delivery_limit(binding):
            reason = (
                f"x-delivery-count {count} reached the queue's delivery limit "
                f"(delivery_limit {binding.delivery_limit}): the broker's last "
                f"delivery is dead-lettered instead of run; its handler crashed, hung "
                f"or lost the connection {count} times"
            )
            return _poison(request, reason)
    elif not binding.max_redeliveries:
        return None
    else:  # classic queues (and an rpc binding's fanout queue): counted by copies
        count = int_header(headers, REDELIVERIES_HEADER) + 1
        if count <= binding.max_redeliveries:
            return Outcome(Action.COUNT, reason=f"redelivery {count}")
    reason = (
        f"redelivered {count} times (max_redeliveries {binding.max_redeliveries}): "
        f"its handler crashed, hung or lost the connection every time"
    )
    return _poison(request, reason)


def _poison(request: Request, reason: str) -> Outcome:
    """Dead-letter a poison message without running it; a call gets PoisonMessage."""
    reply = None
    if request.reply is not None:
        reply = encode_failure(request.reply, PoisonMessage(reason))
    return Outcome(Action.DEAD_LETTER, reply, reason, notes=(Note(Happened.POISON, reason),))


# -- on completion (a handler thread) ------------------------------------------------------


def on_completion(
    binding: Binding, request: Request, result: Any = None, error: Exception | None = None
) -> Outcome:
    """The outcome of a handler run that returned ``result`` or raised ``error``."""
    if error is not None:
        return _on_error(binding, request, error)
    if request.notification is not None and result == REQUEUE_RESULT:
        return _on_error(binding, request, Requeue("the handler returned 'requeue'"))
    done = _DONE if binding.ack_before else _ACKED
    if request.reply is None:
        return done
    try:
        reply = encode_result(request.reply, result)
    except (TypeError, ValueError) as exc:
        return Outcome(
            done.action,
            encode_failure(request.reply, exc),
            notes=(Note(Happened.UNSERIALISABLE, error=exc),),
        )
    return Outcome(done.action, reply)


def _on_error(binding: Binding, request: Request, exc: Exception) -> Outcome:
    if isinstance(exc, Requeue):
        return _failed(binding, request, exc, Note(Happened.RETRY_ASKED, error=exc))
    if isinstance(exc, Reject):
        return _failed(binding, request, exc, Note(Happened.REJECTED, error=exc), final=True)
    if isinstance(exc, HandlerTimeout):  # an async handler, cancelled at its deadline
        return timed_out(binding, request, cancelled=True)
    if isinstance(exc, NoHandleMessage):
        reason = f"handler {binding.handler} {exc}"
        return Outcome(
            Action.NONE if binding.ack_before else Action.DEAD_LETTER,
            None,
            reason,
            notes=(Note(Happened.NO_HANDLE_MESSAGE, reason),),
        )
    if isinstance(exc, (NoSuchMethod, UnsupportedVersion)):  # unknown() let it through
        return _failed(
            binding, request, exc, Note(Happened.UNKNOWN_METHOD, error=exc), final=True, quiet=True
        )
    return _failed(binding, request, exc)


def timed_out(binding: Binding, request: Request, cancelled: bool = False) -> Outcome:
    """The handler is still running ``handler_timeout`` seconds after it started (an
    async one: its task was ``cancelled``)."""
    exc = HandlerTimeout(
        f"handler {binding.handler} did not finish {what(request)} "
        f"within handler_timeout ({binding.handler_timeout:g} s)"
    )
    fate = (
        "its task is cancelled" if cancelled else "its thread is stuck: a fresh one takes its place"
    )
    return _failed(binding, request, exc, Note(Happened.TIMED_OUT, fate, exc))


def _failed(
    binding: Binding,
    request: Request,
    exc: Exception,
    note: Note | None = None,
    *,
    final: bool = False,
    quiet: bool = False,
) -> Outcome:
    """A failure: calls are answered with the error and acked; casts and events are
    retried while max_retries allows (unless ``final``), then dead-lettered.

    ``note``: what to tell of it; without one, the failure is told with its traceback
    and what happens next."""
    reason = f"{type(exc).__name__}: {exc}"
    if binding.ack_before:
        action = Action.NONE
    elif request.is_call:
        action = Action.DEAD_LETTER if isinstance(exc, Reject) else Action.ACK
    elif not final and retries_of(request.headers) < binding.max_retries:
        action = Action.RETRY
    else:
        action = Action.DEAD_LETTER
    if note is None:
        notes: tuple[Note, ...] = (
            Note(Happened.FAILED, _consequence(action, request, binding), exc),
        )
    else:
        notes = (note,)
        if action is Action.DEAD_LETTER and not request.is_call and not quiet:
            notes += (Note(Happened.DEAD_LETTERED, reason),)
    reply = encode_failure(request.reply, exc) if request.reply is not None else None
    return Outcome(action, reply, reason, notes=notes)


def _consequence(action: Action, request: Request, binding: Binding) -> str:
    if request.is_call:
        return "error returned to the caller"
    if action is Action.RETRY:
        attempt = retries_of(request.headers) + 1
        return f"retry {attempt} of {binding.max_retries} in {binding.retry_delay_for(attempt):g} s"
    if action is Action.DEAD_LETTER:
        return f"dead-lettered after {retries_of(request.headers)} retries"
    return "already acked on receipt"


# -- back on the loop thread ---------------------------------------------------------------


def on_completed(d: Delivery, result: Any, completed: CompletedCache, live: bool) -> Outcome:
    """What the loop does with a handler thread's ``result``: a request that completed is
    remembered (its redelivery is not run again), and an outcome for a connection that is
    gone is dropped (the broker redelivers the message: at-least-once)."""
    if result is None:  # skipped: its connection was lost before it could run
        return _DROPPED
    outcome = (
        result
        if isinstance(result, Outcome)
        else Outcome(Action.DEAD_LETTER, reason=f"internal error: {result!r}")
    )  # run() never raises
    if d.request is not None and outcome.action in (Action.ACK, Action.NONE):
        completed.add(d.request.unique_id, outcome.reply)
    if not live:
        return Outcome(Action.DROP, notes=outcome.notes + (Note(Happened.DROPPED),))
    return outcome


def resolve(d: Delivery, outcome: Outcome) -> Outcome:
    """``outcome`` as settle can carry it out for this delivery: a retry on a queue
    without delay queues is dead-lettered, a dead letter without a parking lot of ours
    is rejected (the queue's own dead-letter exchange, if any, applies); a reject on a
    stream is an ack."""
    action = outcome.action
    if action is Action.RETRY and not d.retryable:
        action = Action.DEAD_LETTER
        outcome = dataclasses.replace(outcome, action=action).noting(Note(Happened.NO_DELAY_QUEUE))
    if action is Action.DEAD_LETTER and not d.binding.dead_letters_published:
        outcome = dataclasses.replace(outcome, action=Action.REJECT)
    if outcome.action in _REJECTS and d.binding.is_stream(d.queue):
        # a stream answers basic.reject and basic.nack with 540 NOT_IMPLEMENTED, which
        # closes the connection, and keeps its messages anyway: this reader acks
        outcome = dataclasses.replace(outcome, action=Action.ACK)
    return outcome


_REJECTS = (Action.REJECT, Action.REQUEUE)


def on_copy_refused(d: Delivery, outcome: Outcome, target: str) -> Outcome:
    """The broker refused (nack, or returned unroutable) the copy ``outcome`` published
    to ``target``: reject the original without requeue, so that a missing delay queue or
    parking lot never makes a loop; a count copy's original goes back to its queue."""
    if outcome.action is Action.COUNT:
        return Outcome(Action.REQUEUE, reason=outcome.reason, copy_refused=True)
    note = (
        Note(Happened.RETRY_REFUSED, target)
        if outcome.action is Action.RETRY
        else Note(Happened.DEAD_LETTER_REFUSED)
    )
    return Outcome(Action.REJECT, reason=outcome.reason, copy_refused=True, notes=(note,))
