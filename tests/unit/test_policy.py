"""The ack policy as a table: one row per line of the decision table in
``rpcworker.policy.decisions`` (what happened -> action, reply, what is told), decided
by the real decision functions, without a broker. The decisions never log; what they
say happened (``Note``s) is checked here, and worded by the teller (``test_telling``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

import rpcworker
from rpcworker.config.bindingconf import Binding
from rpcworker.engine.inflight import run
from rpcworker.policy import decisions
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.outcomes import (
    ACK_THEN_RUN,
    RUN,
    Action,
    Delivery,
    Happened,
    Outcome,
    Start,
)
from rpcworker.wire import decoding, envelope, replyformat, xheaders
from tests.fakes import AFTER, BEFORE, RETRYING, ROUTE, Handler, Versioned, req

H = Happened
TIMING = dataclasses.replace(RETRYING, handler_timeout=2.5)
COUNTING = dataclasses.replace(AFTER, max_redeliveries=2)
NOTIFY = Binding(
    name="n",
    type="notification",
    handler="h",
    exchange="openstack",
    durable=False,
    prefetch_count=1,
    acknowledge="after",
    max_retries=1,
    exchanges=("openstack",),
    topics=("notifications",),
    priorities=("info", "error"),
)
FILTERED = dataclasses.replace(NOTIFY, filter_event_type=r"compute\.")
PARKING = dataclasses.replace(RETRYING, dead_letter_queue="parked")
STREAMING = dataclasses.replace(RETRYING, fanout="stream")


class Notified:
    def info(
        self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, metadata: Any
    ) -> str:
        return "requeue" if payload == "again" else "ok"


class NoEvents:
    pass


def quorum(max_redeliveries: int, delivery_limit: int) -> Binding:
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    if delivery_limit:
        args["x-delivery-limit"] = delivery_limit
    return dataclasses.replace(AFTER, max_redeliveries=max_redeliveries, queue_arguments=args)


def notification(
    priority: str = "info", event_type: str = "compute.start", payload: Any = None
) -> decoding.Request:
    body = envelope.oslo_notification(
        priority, event_type, payload, "compute.host1", message_id="n-1"
    )
    as_n = decoding.as_notification(decoding.Request(body=body))
    assert isinstance(as_n, decoding.Request)
    return as_n


def receipt(
    binding: Binding,
    decoded: decoding.Request | decoding.Rejected,
    handler: Any = None,
    completed: CompletedCache | None = None,
    draining: bool = False,
) -> Outcome | Start:
    return decisions.on_receipt(
        binding,
        decoded,
        Handler() if handler is None else handler,
        completed or CompletedCache(8),
        draining=draining,
    )


def remembered(uid: str) -> CompletedCache:
    cache = CompletedCache(8)
    cache.add(uid, replyformat.encode_result(ROUTE, "first"))
    return cache


def delivery(
    binding: Binding = AFTER,
    retryable: bool = True,
    request: decoding.Request | None = None,
    queue: str = "q",
) -> Delivery:
    return Delivery(None, binding, queue, request or req("add"), retryable)


def failed_cast() -> Outcome:
    return run(Handler(), RETRYING, req("boom", call=False))


@dataclasses.dataclass(frozen=True)
class Row:
    #: the line of the decision table
    what: str
    decide: Callable[[], Outcome | Start]
    action: Action | Start
    #: "result", the error type a caller gets, or None: no reply
    reply: str | None
    #: what the outcome says happened, for the log
    told: tuple[Happened, ...] = ()


TABLE = [
    Row(
        "handler returned, call",
        lambda: run(Handler(), AFTER, req("add", args={"a": 1, "b": 2})),
        Action.ACK,
        "result",
    ),
    Row(
        "handler returned, cast",
        lambda: run(Handler(), AFTER, req("add", call=False, args={"a": 1, "b": 2})),
        Action.ACK,
        None,
    ),
    Row(
        "handler returned something not JSON, call",
        lambda: run(Handler(), AFTER, req("unjson")),
        Action.ACK,
        "TypeError",
        (H.UNSERIALISABLE,),
    ),
    Row(
        "handler raised anything, call",
        lambda: run(Handler(), RETRYING, req("boom")),
        Action.ACK,
        "KeyError",
        (H.FAILED,),
    ),
    Row("handler raised anything else, cast", failed_cast, Action.RETRY, None, (H.FAILED,)),
    Row(
        "handler raised anything else, cast, max_retries spent",
        lambda: run(
            Handler(), RETRYING, req("boom", call=False, headers={xheaders.RETRIES_HEADER: 2})
        ),
        Action.DEAD_LETTER,
        None,
        (H.FAILED,),
    ),
    Row(
        "handler raised Requeue, cast",
        lambda: run(Handler(), RETRYING, req("requeue", call=False)),
        Action.RETRY,
        None,
        (H.RETRY_ASKED,),
    ),
    Row(
        "handler raised Requeue, cast, max_retries spent",
        lambda: run(
            Handler(), RETRYING, req("requeue", call=False, headers={xheaders.RETRIES_HEADER: 2})
        ),
        Action.DEAD_LETTER,
        None,
        (H.RETRY_ASKED, H.DEAD_LETTERED),
    ),
    Row(
        "handler raised Reject, cast",
        lambda: run(Handler(), RETRYING, req("reject", call=False)),
        Action.DEAD_LETTER,
        None,
        (H.REJECTED, H.DEAD_LETTERED),
    ),
    Row(
        "handler raised Reject, call",
        lambda: run(Handler(), RETRYING, req("reject")),
        Action.DEAD_LETTER,
        "Reject",
        (H.REJECTED,),
    ),
    Row(
        "no such method, cast (on receipt)",
        lambda: receipt(RETRYING, req("nope", call=False)),
        Action.DEAD_LETTER,
        None,
    ),
    Row(
        "no such method, call (on receipt)",
        lambda: receipt(AFTER, req("_secret")),
        Action.ACK,
        "NoSuchMethod",
    ),
    Row(
        "no such version, call (on receipt)",
        lambda: receipt(AFTER, req("add", version="1.9"), Versioned()),
        Action.ACK,
        "UnsupportedVersion",
    ),
    Row(
        "no such method when called (the handler changed since receipt)",
        lambda: run(Handler(), RETRYING, req("nope", call=False)),
        Action.DEAD_LETTER,
        None,
        (H.UNKNOWN_METHOD,),
    ),
    Row(
        "event and no handle_message",
        lambda: run(NoEvents(), AFTER, decoding.Request(body={})),
        Action.DEAD_LETTER,
        None,
        (H.NO_HANDLE_MESSAGE,),
    ),
    Row(
        "handler ran handler_timeout past start, cast",
        lambda: decisions.timed_out(TIMING, req("add", call=False)),
        Action.RETRY,
        None,
        (H.TIMED_OUT,),
    ),
    Row(
        "handler ran handler_timeout past start, call",
        lambda: decisions.timed_out(TIMING, req("add")),
        Action.ACK,
        "HandlerTimeout",
        (H.TIMED_OUT,),
    ),
    Row(
        "redelivered more than max_redeliveries",
        lambda: receipt(
            COUNTING, req("add", redelivered=True, headers={xheaders.REDELIVERIES_HEADER: 2})
        ),
        Action.DEAD_LETTER,
        "PoisonMessage",
        (H.POISON,),
    ),
    Row(
        "quorum, x-delivery-count >= delivery_limit",
        lambda: receipt(
            quorum(10, 2), req("add", redelivered=True, headers={xheaders.QUORUM_DELIVERY_COUNT: 2})
        ),
        Action.DEAD_LETTER,
        "PoisonMessage",
        (H.POISON,),
    ),
    Row(
        "redelivered (classic queue), within bounds",
        lambda: receipt(COUNTING, req("add", call=False, redelivered=True)),
        Action.COUNT,
        None,
    ),
    Row(
        "already completed (duplicate id)",
        lambda: receipt(AFTER, req("add", unique_id="u1"), completed=remembered("u1")),
        Action.ACK,
        "result",
        (H.DUPLICATE,),
    ),
    Row(
        "refused before dispatch, routable",
        lambda: receipt(AFTER, decoding.Rejected("args must be a JSON object", ROUTE)),
        Action.DEAD_LETTER,
        "InvalidRequest",
    ),
    Row(
        "refused before dispatch, not routable",
        lambda: receipt(AFTER, decoding.Rejected("body is not JSON")),
        Action.DEAD_LETTER,
        None,
    ),
    Row(
        "notification handler returned 'requeue'",
        lambda: run(Notified(), NOTIFY, notification(payload="again")),
        Action.RETRY,
        None,
        (H.RETRY_ASKED,),
    ),
    Row(
        "notification its filters do not match",
        lambda: receipt(FILTERED, notification(event_type="image.upload"), Notified()),
        Action.ACK,
        None,
    ),
    Row(
        "notification its handler has no method for",
        lambda: receipt(NOTIFY, notification("error"), Notified()),
        Action.ACK,
        None,
        (H.NO_PRIORITY_METHOD,),
    ),
    Row(
        "received while the worker drains",
        lambda: receipt(AFTER, req("add"), draining=True),
        Action.REQUEUE,
        None,
    ),
    Row(
        "its connection was lost before it settled",
        lambda: decisions.on_completed(delivery(), failed_cast(), CompletedCache(8), live=False),
        Action.DROP,
        None,
        (H.FAILED, H.DROPPED),
    ),
    Row(
        "its connection was lost before it ran",
        lambda: decisions.on_completed(delivery(), None, CompletedCache(8), live=True),
        Action.DROP,
        None,
    ),
    Row("a well-formed request for a method it has", lambda: receipt(AFTER, req("add")), RUN, None),
    Row(
        "acknowledge = before, on receipt", lambda: receipt(BEFORE, req("add")), ACK_THEN_RUN, None
    ),
    Row(
        "acknowledge = before, handler raised",
        lambda: run(Handler(), BEFORE, req("boom")),
        Action.NONE,
        "KeyError",
        (H.FAILED,),
    ),
    Row(
        "acknowledge = before, handler returned",
        lambda: run(Handler(), BEFORE, req("add", args={"a": 1, "b": 2})),
        Action.NONE,
        "result",
    ),
    # what settle can carry out (resolve), and a copy the broker refused
    Row(
        "retry on a queue without delay queues",
        lambda: decisions.resolve(delivery(PARKING, retryable=False), failed_cast()),
        Action.DEAD_LETTER,
        None,
        (H.FAILED, H.NO_DELAY_QUEUE),
    ),
    Row(
        "dead letter without a parking lot",
        lambda: decisions.resolve(delivery(RETRYING), Outcome(Action.DEAD_LETTER)),
        Action.REJECT,
        None,
    ),
    Row(
        "dead letter without a parking lot, read from a stream (which refuses rejects)",
        lambda: decisions.resolve(
            delivery(STREAMING, retryable=False, queue="t_fanout"), Outcome(Action.DEAD_LETTER)
        ),
        Action.ACK,
        None,
    ),
    Row(
        "requeue (a stopping worker) of a delivery read from a stream",
        lambda: decisions.resolve(
            delivery(STREAMING, retryable=False, queue="t_fanout"), Outcome(Action.REQUEUE)
        ),
        Action.ACK,
        None,
    ),
    Row(
        "requeue of the same binding's work queue is still a requeue",
        lambda: decisions.resolve(delivery(STREAMING, queue="t"), Outcome(Action.REQUEUE)),
        Action.REQUEUE,
        None,
    ),
    Row(
        "retry copy refused by the broker",
        lambda: decisions.on_copy_refused(delivery(), Outcome(Action.RETRY), "q.retry.1000"),
        Action.REJECT,
        None,
        (H.RETRY_REFUSED,),
    ),
    Row(
        "dead letter refused by the parking lot",
        lambda: decisions.on_copy_refused(delivery(), Outcome(Action.DEAD_LETTER), "parked"),
        Action.REJECT,
        None,
        (H.DEAD_LETTER_REFUSED,),
    ),
    Row(
        "count copy refused by the broker",
        lambda: decisions.on_copy_refused(delivery(), Outcome(Action.COUNT), "q"),
        Action.REQUEUE,
        None,
    ),
]


def reply_of(outcome: Outcome) -> str | None:
    if outcome.reply is None:
        return None
    body = json.loads(outcome.reply.body)
    return "result" if "result" in body else str(body["error"]["type"])


@pytest.mark.parametrize("row", TABLE, ids=[r.what for r in TABLE])
def test_decision_table(row: Row, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rpcworker")
    decided = row.decide()
    if isinstance(decided, Start):
        assert decided is row.action
        return
    assert (decided.action, reply_of(decided)) == (row.action, row.reply)
    assert tuple(n.happened for n in decided.notes) == row.told
    assert not caplog.records, "a decision logged: telling is the engine's job"


def test_the_table_covers_every_note_and_action() -> None:
    outcomes = [o for o in (r.decide() for r in TABLE) if isinstance(o, Outcome)]
    told = {n.happened for o in outcomes for n in o.notes}
    assert told == set(Happened)
    assert {o.action for o in outcomes} == set(Action)


def test_outcomes_carry_their_reason_and_refusal() -> None:
    cast = failed_cast()
    assert cast.reason == "KeyError: 'boom'" and cast.refusal is None
    refused = receipt(RETRYING, req("nope", call=False))
    assert isinstance(refused, Outcome)
    assert (
        refused.refusal
        == refused.reason
        == ("NoSuchMethod: Endpoint does not support RPC method nope")
    )
    bad = receipt(AFTER, decoding.Rejected("body is not JSON"))
    assert isinstance(bad, Outcome) and bad.refusal == "body is not JSON"
    filtered = receipt(FILTERED, notification(event_type="image.upload"), Notified())
    assert isinstance(filtered, Outcome) and filtered.filtered
    assert (
        Outcome(Action.REJECT).dead_lettered
        and not Outcome(Action.REJECT, copy_refused=True).dead_lettered
    )


def test_a_remembered_reply_is_the_first_ones() -> None:
    dup = receipt(AFTER, req("add", unique_id="u1"), completed=remembered("u1"))
    assert isinstance(dup, Outcome) and dup.reply is not None
    assert json.loads(dup.reply.body) == {"result": "first"}


def test_completed_requests_are_remembered_even_when_dropped() -> None:
    cache = CompletedCache(8)
    d = delivery(request=req("add", unique_id="u2"))
    done = run(Handler(), AFTER, req("add", unique_id="u2", args={"a": 1, "b": 1}))
    assert decisions.on_completed(d, done, cache, live=False).action is Action.DROP
    assert "u2" in cache  # its redelivery is answered, not run again
    failed = decisions.on_completed(
        delivery(request=req("boom", unique_id="u3")), failed_cast(), cache, live=True
    )
    assert failed.action is Action.RETRY and "u3" not in cache


# -- the bounds of redeliveries, in detail ---------------------------------------------------


def redelivered(b: Binding, count: int, call: bool = False) -> Outcome | None:
    return decisions.redelivered(
        b, req("add", call=call, redelivered=count > 0, headers={"x-delivery-count": count})
    )


@pytest.mark.parametrize(
    "max_redeliveries, limit, runs, by_limit",
    [
        # the broker delivers x-delivery-count 0..L, then drops the message: count L is
        # never run, so at most L runs (counts 0..L-1), fewer when max_redeliveries says so
        (10, 3, 3, True),  # max_redeliveries bigger: the delivery limit bounds it
        (0, 3, 3, True),  # max_redeliveries off
        (1, 3, 2, False),  # max_redeliveries smaller: it bounds, as without a limit
        (2, 3, 3, False),  # equal bounds (L - 1 == max_redeliveries)
        (0, 1, 1, True),  # L = 1: the one redelivery the broker makes is not run
        (2, 0, 3, False),  # no delivery_limit: max_redeliveries as before
    ],
)
def test_quorum_delivery_limit_boundaries(
    max_redeliveries: int, limit: int, runs: int, by_limit: bool
) -> None:
    b = quorum(max_redeliveries, limit)
    for count in range(runs):  # these deliveries run
        assert redelivered(b, count) is None, count
    last = redelivered(b, runs)
    assert last is not None and last.action is Action.DEAD_LETTER
    assert ("delivery limit" in (last.reason or "")) is by_limit
    beyond = redelivered(b, runs + 1)  # the broker never sends it with a limit: still parked
    assert beyond is not None and beyond.action is Action.DEAD_LETTER


def test_quorum_delivery_limit_counts_l_minus_1_l_l_plus_1() -> None:
    b = quorum(10, 2)
    assert redelivered(b, 1) is None  # L - 1: run
    at_limit = redelivered(b, 2, call=True)  # L: the broker's last delivery
    assert at_limit is not None and at_limit.action is Action.DEAD_LETTER
    assert "x-delivery-count 2" in (at_limit.reason or "")
    assert "delivery_limit 2" in (at_limit.reason or "")
    assert redelivered(b, 3) is not None  # L + 1
    assert redelivered(quorum(0, 0), 50) is None  # no bound at all
    assert (
        decisions.redelivered(
            dataclasses.replace(b, acknowledge="before"),
            req("add", redelivered=True, headers={"x-delivery-count": 5}),
        )
        is None
    )


def test_quorum_binding_without_delivery_count_counts_like_a_classic_queue() -> None:
    """An rpc quorum binding's fanout queue is classic: no x-delivery-count there."""
    b = quorum(2, 3)
    first = decisions.redelivered(b, req("add", call=False, redelivered=True))
    assert first is not None and first.action is Action.COUNT
    assert decisions.redelivered(quorum(0, 3), req("add", redelivered=True)) is None


def test_classic_redeliveries_are_counted_then_dead_lettered() -> None:
    assert decisions.redelivered(COUNTING, req("add", call=False)) is None  # not redelivered
    for seen in (0, 1):
        counted = decisions.redelivered(
            COUNTING,
            req("add", call=False, redelivered=True, headers={xheaders.REDELIVERIES_HEADER: seen}),
        )
        assert counted is not None and counted.action is Action.COUNT
    assert (
        decisions.redelivered(
            dataclasses.replace(COUNTING, max_redeliveries=0), req("add", redelivered=True)
        )
        is None
    )


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), "9" * 5000, [1], {"a": 1}, b"x", None]
)
def test_counter_headers_that_are_not_counts_are_zero(value: Any) -> None:
    """A float inf in x-rpcworker-redeliveries made on_receipt raise OverflowError in the
    consumer loop: the daemon died, and again on every redelivery."""
    for name in (
        xheaders.REDELIVERIES_HEADER,
        xheaders.RETRIES_HEADER,
        xheaders.QUORUM_DELIVERY_COUNT,
    ):
        assert xheaders.int_header({name: value}, name) == 0
    out = decisions.redelivered(
        COUNTING,
        req("add", call=False, redelivered=True, headers={xheaders.REDELIVERIES_HEADER: value}),
    )
    assert out is not None and out.action is Action.COUNT
    failed = run(
        Handler(), RETRYING, req("boom", call=False, headers={xheaders.RETRIES_HEADER: value})
    )
    assert failed.action is Action.RETRY


def test_acknowledge_before_never_acts_after() -> None:
    for method in ("add", "boom", "reject", "requeue", "nope"):
        out = run(Handler(), BEFORE, req(method, args={"a": 1, "b": 2} if method == "add" else {}))
        assert out.action is Action.NONE, method
        assert out.reply is not None


@pytest.mark.parametrize("binding", [AFTER, BEFORE])
def test_unknown_method_is_refused_on_receipt_even_at_most_once(binding: Binding) -> None:
    """Decided on the loop thread before any receipt ack, so even at-most-once parks it."""
    cast = receipt(binding, req("nope", call=False))
    assert isinstance(cast, Outcome) and cast.action is Action.DEAD_LETTER
    assert receipt(binding, req(None, call=False)) in (RUN, ACK_THEN_RUN)  # an event


def test_a_handler_may_raise_the_public_exceptions() -> None:
    """``rpcworker.Reject`` and ``rpcworker.Requeue`` are the plugin author's words."""
    assert issubclass(rpcworker.Reject, rpcworker.RPCWorkerError)
    assert issubclass(rpcworker.Requeue, rpcworker.RPCWorkerError)
