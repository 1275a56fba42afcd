"""Settle: carrying out outcomes (as decisions.resolve makes them), on kombu's memory
transport with fake deliveries; the counters come from its settled events."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest

from rpcworker.engine.acks import Acks
from rpcworker.policy.outcomes import Action, Delivery, Outcome
from rpcworker.wire import decoding, replyformat
from tests.fakes import BINDING, Box, FakeMessage


@pytest.fixture
def conn() -> Iterator[kombu.Connection]:
    c = kombu.Connection("memory://")
    for name in ("q", "q.retry.1000", "parked", "replies"):
        kombu.Queue(name)(c.channel()).declare()
    yield c
    c.release()


def take(conn: kombu.Connection, queue: str) -> list[Any]:
    q = kombu.Queue(queue)(conn.channel())
    out = []
    while (m := q.get(no_ack=True)) is not None:
        out.append(m)
    return out


def test_retry_copy_goes_to_the_delay_queue_then_the_original_is_acked(
    conn: kombu.Connection,
) -> None:
    box = Box(conn)
    msg = FakeMessage()
    box.settle(Delivery(msg, BINDING, "q", None), Outcome(Action.RETRY, reason="boom"))
    assert msg.settled == ["ack"] and box.stats.retried == 1
    [copy] = take(conn, "q.retry.1000")
    assert copy.headers["x-rpcworker-retries"] == 1
    assert copy.headers["x-rpcworker-original-routing-key"] == "k"


def test_retry_on_a_queue_without_delay_queues_dead_letters(conn: kombu.Connection) -> None:
    box = Box(conn)
    msg = FakeMessage()
    box.settle(
        Delivery(msg, BINDING, "q", None, retryable=False), Outcome(Action.RETRY, reason="boom")
    )
    assert msg.settled == ["ack"] and box.stats.dead_lettered == 1
    [parked] = take(conn, "parked")
    assert parked.headers["x-rpcworker-failure"] == "boom"


def test_dead_letter_without_parking_lot_rejects(conn: kombu.Connection) -> None:
    box = Box(conn)
    msg = FakeMessage()
    plain = dataclasses.replace(BINDING, dead_letter_queue=None)
    box.settle(Delivery(msg, plain, "q", None), Outcome(Action.DEAD_LETTER, reason="x"))
    assert msg.settled == ["reject"]


def test_count_sends_the_copy_to_the_tail_of_the_same_queue(conn: kombu.Connection) -> None:
    box = Box(conn)
    msg = FakeMessage(headers={"x-rpcworker-redeliveries": 1})
    box.settle(Delivery(msg, BINDING, "q", None), Outcome(Action.COUNT))
    assert msg.settled == ["ack"]
    [copy] = take(conn, "q")
    assert copy.headers["x-rpcworker-redeliveries"] == 2


def test_blocked_connection_defers_what_publishes(conn: kombu.Connection) -> None:
    box = Box(conn)
    box.on_blocked("low on memory")
    plain_ack, with_reply = FakeMessage(), FakeMessage()
    reply = replyformat.encode_result(decoding.ReplyRoute("amqp", "replies", None, "c"), 1)
    box.settle(Delivery(plain_ack, BINDING, "q", None), Outcome(Action.ACK))
    box.settle(Delivery(with_reply, BINDING, "q", None), Outcome(Action.ACK, reply))
    assert plain_ack.settled == ["ack"]  # acks need no publish: they go on
    assert with_reply.settled == [] and box.pending == 1 and take(conn, "replies") == []
    box.on_unblocked()
    assert with_reply.settled == ["ack"] and box.pending == 0
    [sent] = take(conn, "replies")
    assert json.loads(sent.body) == {"result": 1}


def test_returned_reply_is_resent_with_backoff_then_dropped(conn: kombu.Connection) -> None:
    box = Box(conn)

    class Returned:
        body = '{"result": 2}'  # py-amqp hands back str bodies
        properties = {"correlation_id": "c9"}

    box.replies._on_return(Exception("NO_ROUTE"), "", "replies", Returned())
    assert box.resend_returned(now=0.0) > 0  # not due yet
    now = time.monotonic()
    box.resend_returned(now + 0.3)
    [sent] = take(conn, "replies")
    assert sent.properties["correlation_id"] == "c9"
    assert box.resend_returned(now + 61.0) > 0 and box.replies._returned == []


class FakeChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))


@dataclasses.dataclass
class Tagged:
    channel: FakeChannel
    delivery_tag: int


def test_acks_below_the_oldest_open_delivery_go_as_one_multiple_ack(conn: kombu.Connection) -> None:
    box = Box(conn)
    box.acks = Acks(batch=True)  # as on py-amqp
    ch = FakeChannel()
    msgs = [Tagged(ch, tag) for tag in range(1, 7)]
    for m in msgs:
        box.received(m)
    for tag in (1, 2, 3, 5, 6):  # 4 is still being handled
        box.settle(Delivery(msgs[tag - 1], BINDING, "q", None), Outcome(Action.ACK))
    box.flush()
    assert ch.acks == [(3, True), (5, False), (6, False)]
    box.settle(Delivery(msgs[3], BINDING, "q", None), Outcome(Action.ACK))
    box.flush()
    assert ch.acks[-1] == (4, True)  # nothing open left below or above it
    assert box.stats.acked == 6
