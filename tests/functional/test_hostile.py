"""Hostile messages never hurt the worker: a flood of malformed messages, interleaved
with good work, against the real daemon and broker.

Every good message is handled exactly once and every call answered; every malformed
one is parked (never run, never retried) with its reason; nothing is unpickled; the
queue drains; the worker lives on; and the refusal log is rate limited.
"""

from __future__ import annotations

import collections
import json
import pickle
import random
import re
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pika
import pytest

from tests.functional.conftest import BROKER_HOST, BROKER_PORT
from tests.functional.support import PikaClient, Workers, queue_drained, queue_info, records
from tests.helpers import wait_for

MAX_SIZE = 4096
N_MALFORMED = 400
N_GOOD_CASTS = 200
N_GOOD_CALLS = 20
#: the consumer's refusal line and the rate limiter's summary line
REFUSAL_LINE = re.compile(r"binding api: message \(exchange .*\) refused: ")
SUMMARY_LINE = re.compile(
    r"binding api: (\d+) more messages refused in the last 10 s "
    r"\(last reason: .+\)"
)
#: recorder attributes and names that are never RPC methods
NOT_METHODS = [
    "__init__",
    "_private",
    "__class__",
    "target",
    "handle_message",
    "path",
    "delay",
    "_write",
    "_lock",
    "__dict__",
    "__reduce__",
    "mro",
]


class _Canary:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


class Bad:
    """One malformed message: what is published and the reason it must be parked with."""

    def __init__(
        self,
        body: bytes,
        reason: str,
        content_type: str | None = "application/json",
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        call: bool = False,
        decoded: bool = False,
    ) -> None:
        self.body = body
        self.reason = reason
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.headers = headers
        self.call = call
        #: refused by the dispatcher (NoSuchMethod), not by decoding.decode
        self.decoded = decoded


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _oslo(inner: str, version: Any = "2.0") -> bytes:
    return _json({"oslo.version": version, "oslo.message": inner})


def malformed(rng: random.Random, n: int, canary: str) -> list[Bad]:
    """``n`` malformed messages of every kind, in a shuffled, reproducible order."""
    good = {"method": "record", "args": {"bad": True}}
    pickled = pickle.dumps({"method": "record", "args": {"x": _Canary(canary)}})
    kinds = [
        lambda: Bad(
            rng.choice([b"\x00", b"\xfe"]) + rng.randbytes(rng.randint(0, 300)),
            "refused: body is not",
        ),  # not JSON, or not UTF-8
        lambda: Bad(_json(good)[: rng.randint(1, 30)], "refused: body is not JSON"),
        lambda: Bad(
            _json({"method": "record", "args": [1, 2]}),
            "refused: args must be a JSON object, not list",
            call=rng.random() < 0.3,
        ),
        lambda: Bad(
            _json({"method": rng.randint(-9, 9), "args": {}}),
            "refused: method must be a non-empty string",
        ),
        lambda: Bad(
            _json({"method": "record", "args": {}, "context": "admin"}),
            "refused: context must be a JSON object, not str",
            call=rng.random() < 0.3,
        ),
        lambda: Bad(
            _json({"method": "record", "args": {"pad": "x" * rng.randint(MAX_SIZE, 3 * MAX_SIZE)}}),
            f"over max_message_size ({MAX_SIZE})",
        ),
        lambda: Bad(
            b'{"method": "record", "args": {"s": "\xff\xfe\xc3"}}',
            "refused: body is not valid UTF-8",
        ),
        lambda: Bad(
            pickled,
            "refused: content type 'application/x-python-serialize' refused",
            content_type="application/x-python-serialize",
        ),
        lambda: Bad(pickled, "refused: body is not valid UTF-8"),  # a pickle labelled JSON
        lambda: Bad(_oslo(json.dumps(good)[:-3]), "refused: oslo envelope: oslo.message is not"),
        lambda: Bad(_oslo(json.dumps(good), version="3.0"), "refused: oslo envelope version"),
        lambda: Bad(
            _json({"oslo.version": "2.0", "oslo.message": {"method": "record"}}),
            "refused: oslo envelope: oslo.message is not a JSON string",
        ),
        lambda: Bad(b'{"method": "record", "args": {"x": NaN}}', "JSON constant NaN"),
        lambda: Bad(b"[" * 1500 + b"]" * 1500, "refused: body is not JSON: nested too deeply"),
        lambda: Bad(_json(good), "refused: content encoding 'gzip'", content_encoding="gzip"),
        lambda: Bad(_json(good), "refused: content type 'text/plain", content_type="text/plain"),
        lambda: Bad(
            rng.choice([_json(good), zlib.compress(_json(good))]),
            "refused: compressed bodies",
            headers={
                "compression": rng.choice(["gzip", "zlib", "application/x-bz2", "no-such-codec"])
            },
        ),
        lambda: (
            lambda name: Bad(
                _json({"method": name, "args": {}}),
                f"NoSuchMethod: Endpoint does not support RPC method {name}",
                decoded=True,
            )
        )(rng.choice(NOT_METHODS)),
        lambda: (
            lambda name: Bad(
                _oslo(json.dumps({"method": name, "args": {}, "_unique_id": f"u{rng.random()}"})),
                f"NoSuchMethod: Endpoint does not support RPC method {name}",
                decoded=True,
            )
        )(rng.choice(NOT_METHODS)),
    ]
    out = [kinds[i % len(kinds)]() for i in range(n)]
    rng.shuffle(out)
    return out


class Parked(NamedTuple):
    message_id: str | None
    headers: dict[str, Any]
    body: bytes


def parked(queue: str) -> list[Parked]:
    """Everything in the parking lot ``queue`` (consumed), as published: with pika, which
    (unlike kombu) neither decodes nor inflates bodies."""
    out = []
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=BROKER_HOST, port=BROKER_PORT))
    try:
        channel = conn.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(Parked(props.message_id, dict(props.headers or {}), body))
    finally:
        conn.close()


def publish_bad(amqp: PikaClient, d: Any, bad: Bad, tag: str, reply_to: str) -> None:
    props: dict[str, Any] = {
        "message_id": tag,
        "headers": bad.headers,
        "content_encoding": bad.content_encoding,
    }
    if bad.call:
        props.update(reply_to=reply_to, correlation_id=tag)
    amqp.publish(d.exchange, d.key, bad.body, content_type=bad.content_type, **props)


def refusal_counts(log: str) -> tuple[int, list[int]]:
    """Refusal lines logged, and the counts of the summary lines."""
    lines = log.splitlines()
    return (
        sum(1 for line in lines if REFUSAL_LINE.search(line)),
        [int(m.group(1)) for line in lines if (m := SUMMARY_LINE.search(line))],
    )


def accounted(log: str) -> int:
    """Refused messages the log accounts for: one per line, plus the summaries' counts."""
    lines, summaries = refusal_counts(log)
    return lines + sum(summaries)


@pytest.fixture
def api(workers: Workers, uid: str) -> Any:
    dlq = f"dlq-{uid}"
    workers.queues |= {dlq}
    d = workers.start(
        {
            "api": {
                "type": "direct",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": f"q-{uid}",
                "routing_key": f"rk-{uid}",
                "max_retries": 0,
                "dead_letter_queue": dlq,
            }
        },
        default={"max_message_size": MAX_SIZE},
    )
    d.exchange, d.key, d.queue, d.dlq = f"ex-{uid}", f"rk-{uid}", f"q-{uid}", dlq
    return d


def test_flood_of_malformed_messages(api: Any, amqp: PikaClient, tmp_path: Path) -> None:
    rng = random.Random(20240607)
    canary = tmp_path / "PWNED"
    bad = malformed(rng, N_MALFORMED, str(canary))
    good: list[tuple[str, int]] = [("cast", i) for i in range(N_GOOD_CASTS)] + [
        ("call", i) for i in range(N_GOOD_CALLS)
    ]
    rng.shuffle(good)
    reply_to = amqp.reply_queue()
    stream: list[tuple[str, Any]] = [("bad", (i, b)) for i, b in enumerate(bad)] + [
        ("good", item) for item in good
    ]
    rng.shuffle(stream)  # the good ones interleaved with the malformed ones
    for what, item in stream:
        if what == "bad":
            i, b = item
            publish_bad(amqp, api, b, f"bad-{i}", reply_to)
        else:
            kind, i = item
            props = {"reply_to": reply_to, "correlation_id": f"good-{i}"} if kind == "call" else {}
            amqp.publish(
                api.exchange, api.key, {"method": "record", "args": {"kind": kind, "i": i}}, **props
            )

    # every good message handled exactly once
    expected = {("cast", i) for i in range(N_GOOD_CASTS)} | {
        ("call", i) for i in range(N_GOOD_CALLS)
    }
    wait_for(
        lambda: len(records(api, method="record")) >= len(expected),
        60,
        message=f"{len(expected)} good messages recorded (log: {api.log_tail()})",
    )
    handled = collections.Counter(
        (r["args"]["kind"], r["args"]["i"]) for r in records(api, method="record")
    )
    assert set(handled) == expected and set(handled.values()) == {1}

    # every call answered: the good ones with their result, malformed ones with the error
    bad_calls = {f"bad-{i}": b for i, b in enumerate(bad) if b.call}
    replies = amqp.wait_replies(N_GOOD_CALLS + len(bad_calls), timeout=30)
    by_corr = {props.correlation_id: json.loads(body) for props, body in replies}
    assert len(by_corr) == len(replies) == N_GOOD_CALLS + len(bad_calls)
    for i in range(N_GOOD_CALLS):
        assert by_corr[f"good-{i}"] == {"result": {"kind": "call", "i": i}}
    for tag, b in bad_calls.items():
        error = by_corr[tag]["error"]
        assert error["type"] == "InvalidRequest" and error["message"] in b.reason, error

    # every malformed message parked with its reason; the work queue is empty
    wait_for(
        lambda: (queue_info(api.dlq) or {}).get("messages_ready") == N_MALFORMED,
        60,
        message=f"{N_MALFORMED} messages in the parking lot "
        f"(now {queue_info(api.dlq)}; log: {api.log_tail()})",
    )
    wait_for(lambda: queue_drained(api.queue), 30, message="the work queue drained")
    copies = parked(api.dlq)
    assert len(copies) == N_MALFORMED
    for m in copies:
        assert m.message_id is not None
        i = int(m.message_id.removeprefix("bad-"))
        reason = m.headers["x-rpcworker-failure"]
        assert bad[i].reason in reason, (bad[i].reason, reason)
        assert m.headers["x-rpcworker-binding"] == "api"
        assert m.headers["x-rpcworker-retries"] == 0  # parked at once, never retried
        assert m.body == bad[i].body  # byte for byte
    assert sorted(int(str(m.message_id)[4:]) for m in copies) == list(range(N_MALFORMED))

    # nothing was unpickled, and the worker lives on and serves
    assert not canary.exists()
    assert api.alive()
    answered = len(amqp.received)
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "record", "args": {"after": True}},
        reply_to=reply_to,
        correlation_id="after",
    )
    ((props, body),) = amqp.wait_replies(answered + 1)[answered:]
    assert props.correlation_id == "after" and json.loads(body) == {"result": {"after": True}}
    assert len(records(api, method="record")) == len(expected) + 1  # still no duplicate

    # the refusal log is rate limited, and still counts every refused message exactly:
    # those decode refused and those naming no method of the handler alike
    refused_by_decode = sum(1 for b in bad if not b.decoded)
    refused = N_MALFORMED
    wait_for(
        lambda: refusal_counts(api.log())[1],
        30,
        message="the rate limiter's summary line in the log",
    )
    lines, summaries = refusal_counts(api.log())
    assert lines < refused and lines <= 10 * (len(summaries) + 1)
    wait_for(
        lambda: accounted(api.log()) == refused,
        30,
        message=f"lines + summaries == {refused} refusals (now {refusal_counts(api.log())})",
    )
    log = api.log()
    assert "Traceback" not in log and "cannot decode" not in log and "internal error" not in log
    print(
        f"\nsent {N_MALFORMED} malformed ({refused_by_decode} refused undecoded, "
        f"{N_MALFORMED - refused_by_decode} unknown methods), {N_GOOD_CASTS} good casts, "
        f"{N_GOOD_CALLS} good calls; refusal lines {lines}, summaries {summaries}"
    )


def test_a_handlers_conf_is_not_an_rpc_method(
    workers: Workers, amqp: PikaClient, uid: str, tmp_path: Path
) -> None:
    """The echo handler keeps its ConfigOpts as ``self.conf``, and a ConfigOpts is
    callable: a call of method "conf" used to clear the worker's configuration and parse
    any file the message named, quoting it back to the caller in the error."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    d = workers.start(
        {
            "api": {
                "type": "direct",
                "handler": "echo",
                "exchange": f"ex-{uid}",
                "queue": f"q-{uid}",
                "routing_key": f"rk-{uid}",
            }
        }
    )
    reply_to = amqp.reply_queue()
    attack = {"default_config_files": [str(secret)], "project": "x"}
    for n, method in enumerate(["conf", "__init__", "__class__", "handle_message", "target"]):
        amqp.publish(
            f"ex-{uid}",
            f"rk-{uid}",
            {"method": method, "args": attack},
            reply_to=reply_to,
            correlation_id=f"c{n}",
        )
    amqp.publish(
        f"ex-{uid}",
        f"rk-{uid}",
        {"method": "ping", "args": {}},
        reply_to=reply_to,
        correlation_id="ping",
    )
    replies = {p.correlation_id: json.loads(b) for p, b in amqp.wait_replies(6)}
    assert replies.pop("ping") == {"result": "pong"}
    for reply in replies.values():
        assert reply["error"]["type"] == "NoSuchMethod", reply
        assert "TOP-SECRET" not in json.dumps(reply)
    assert d.alive() and "TOP-SECRET" not in d.log()


def test_redelivered_messages_with_hostile_counters(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    """x-rpcworker-redeliveries and x-rpcworker-retries come from the publisher: garbage in
    them on a redelivered message is a count of 0 (a float inf would raise OverflowError,
    but RabbitMQ refuses inf/NaN doubles: it closes the publisher's channel). Redelivered
    here the way the broker does it: consumed, never acked, the channel closed."""
    queue = f"q-{uid}"
    options = {
        "type": "direct",
        "handler": "recorder",
        "exchange": f"ex-{uid}",
        "queue": queue,
        "routing_key": f"rk-{uid}",
        "max_redeliveries": 3,
    }
    first = workers.start({"api": options}, name="w1")
    first.stop()
    values: list[Any] = ["9" * 5000, "x", [1, 2], {"n": 1}, -7, None, b"\xff", Decimal("2.5")]
    for n, value in enumerate(values):
        amqp.publish(
            f"ex-{uid}",
            f"rk-{uid}",
            {"event": n},
            headers={"x-rpcworker-redeliveries": value, "x-rpcworker-retries": value},
        )
    _redeliver_all(queue, len(values))
    d = workers.start({"api": options}, name="w2")
    # counted (not run): back at the tail with a sane count, then run once each
    wait_for(
        lambda: len(records(d, kind="event")) == len(values),
        30,
        message=f"every message handled (log: {d.log_tail()})",
    )
    counts = {
        r["body"]["event"]: r["headers"]["x-rpcworker-redeliveries"]
        for r in records(d, kind="event")
    }
    assert counts == {**{n: 1 for n in range(len(values) - 1)}, len(values) - 1: 3}
    wait_for(lambda: queue_drained(queue), 30, message="queue drained")
    assert d.alive() and "Traceback" not in d.log()


def _redeliver_all(queue: str, n: int) -> None:
    """Take ``n`` messages from ``queue`` without acking them, then close the channel:
    the broker puts them back, flagged redelivered."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=BROKER_HOST, port=BROKER_PORT))
    try:
        channel = conn.channel()
        taken = 0
        while taken < n:
            method, _, _ = channel.basic_get(queue, auto_ack=False)
            if method is None:
                conn.process_data_events(time_limit=0.05)
                continue
            taken += 1
        channel.close()
    finally:
        conn.close()


def test_text_bodies_in_foreign_encodings_are_parked(api: Any, amqp: PikaClient) -> None:
    """py-amqp hands over a str when the message names a text encoding it knows; one
    other than utf-8 is refused and parked, and the worker goes on."""
    bodies = [
        ("utf-16", '{"method": "record", "args": {}}'.encode("utf-16")),
        ("latin-1", '{"method": "record", "args": {"s": "é"}}'.encode("latin-1")),
        ("cp500", '{"method": "record", "args": {}}'.encode("cp500")),
    ]
    for encoding, body in bodies:
        amqp.publish(api.exchange, api.key, body, content_encoding=encoding)
    amqp.publish(api.exchange, api.key, {"method": "record", "args": {"good": True}})
    wait_for(lambda: records(api, method="record"), 15, message="the good message handled")
    wait_for(
        lambda: (queue_info(api.dlq) or {}).get("messages_ready") == len(bodies),
        15,
        message=f"{len(bodies)} parked (log: {api.log_tail()})",
    )
    for m in parked(api.dlq):
        assert "content encoding" in m.headers["x-rpcworker-failure"]
    assert api.alive() and queue_drained(api.queue)


def survives_and_parks(api: Any, amqp: PikaClient) -> None:
    """After one bad message: a good one is handled, the worker lives, the bad one is parked."""
    amqp.publish(api.exchange, api.key, {"method": "record", "args": {"good": True}})
    wait_for(
        lambda: records(api, method="record") or not api.alive(),
        15,
        message="the good message handled, or the worker dead",
    )
    assert api.alive(), api.log_tail(5)
    wait_for(
        lambda: (queue_info(api.dlq) or {}).get("messages_ready") == 1,
        15,
        message="the message parked",
    )


def test_a_body_that_decodes_to_lone_surrogates_is_parked(api: Any, amqp: PikaClient) -> None:
    amqp.publish(
        api.exchange,
        api.key,
        b'{"method": "record", "args": {"s": "\\ud800"}}',
        content_encoding="unicode_escape",
    )
    survives_and_parks(api, amqp)


@pytest.mark.parametrize(
    "compression", ["gzip", "application/x-bz2", "no-such-codec", "zlib-valid"]
)
def test_a_compression_header_is_refused_without_inflating(
    api: Any, amqp: PikaClient, compression: str
) -> None:
    body = b'{"method": "record", "args": {}}'
    if compression == "zlib-valid":  # inflates fine: it must still be parked as sent
        compression, body = "zlib", zlib.compress(body)
    amqp.publish(api.exchange, api.key, body, headers={"compression": compression})
    survives_and_parks(api, amqp)
    [m] = parked(api.dlq)
    assert "compressed bodies" in m.headers["x-rpcworker-failure"]
    assert m.body == body  # as published: never inflated
