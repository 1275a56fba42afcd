"""Messages that must never be executed: rejected, logged, and the worker goes on."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from tests.functional.support import PikaClient, Workers, queue_drained, records
from tests.helpers import wait_for


@pytest.fixture
def api(workers: Workers, uid: str) -> Any:
    d = workers.start(
        {
            "api": {
                "type": "direct",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": f"q-{uid}",
                "routing_key": f"rk-{uid}",
            }
        }
    )
    d.exchange, d.key, d.queue = f"ex-{uid}", f"rk-{uid}", f"q-{uid}"
    return d


class _Canary:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def _bad(kind: str, tmp_path: Path) -> tuple[bytes, str | None, str]:
    """(body, content_type, text expected in the log) of one kind of bad message."""
    call = {"method": "record", "args": {"bad": kind}}
    if kind == "not-json":
        return b"this is not JSON", "application/json", "body is not JSON"
    if kind == "invalid-utf8":
        return b'{"method": "record", "args": {"s": "\xff\xfe"}}', None, "not valid UTF-8"
    if kind == "pickle":
        body = pickle.dumps({"method": "record", "args": {"x": _Canary(str(tmp_path / "PWNED"))}})
        return body, "application/x-python-serialize", "application/x-python-serialize"
    if kind == "truncated":
        return json.dumps(call).encode()[:-7], "application/json", "body is not JSON"
    if kind == "nan":
        return b'{"method": "record", "args": {"x": NaN}}', "application/json", "NaN"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["not-json", "invalid-utf8", "pickle", "truncated", "nan"])
def test_bad_message_rejected_and_worker_goes_on(
    api: Any, amqp: PikaClient, tmp_path: Path, kind: str
) -> None:
    body, ctype, logged = _bad(kind, tmp_path)
    amqp.publish(api.exchange, api.key, body, content_type=ctype)
    wait_for(lambda: "refused" in api.log(), 10, message="the refusal in the daemon log")
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained (ready 0, unacked 0)")
    refusals = [line for line in api.log().splitlines() if "refused" in line]
    assert len(refusals) == 1 and logged in refusals[0], refusals
    # a good message after it is handled; the bad one never was, and never comes back
    amqp.publish(api.exchange, api.key, {"method": "record", "args": {"good": True}})
    (rec,) = wait_for(lambda: records(api), 10, message="the good message handled")
    assert rec["args"] == {"good": True}
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained again")
    assert len([line for line in api.log().splitlines() if "refused" in line]) == 1
    assert api.alive()
    assert not (tmp_path / "PWNED").exists()


def test_args_not_an_object_gets_an_error_reply(api: Any, amqp: PikaClient) -> None:
    reply_to = amqp.reply_queue()
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "record", "args": [1, 2]},
        reply_to=reply_to,
        correlation_id="corr-bad",
    )
    ((props, body),) = amqp.wait_replies(1)  # an answer, not a timeout
    assert props.correlation_id == "corr-bad"
    error = json.loads(body)["error"]
    assert error["type"] == "InvalidRequest"
    assert "args must be a JSON object" in error["message"]
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")
    assert "args must be a JSON object" in api.log()
    # the worker goes on
    amqp.publish(
        api.exchange,
        api.key,
        {"method": "record", "args": {"n": 1}},
        reply_to=reply_to,
        correlation_id="corr-good",
    )
    ((props, body),) = amqp.wait_replies(2)[1:]
    assert props.correlation_id == "corr-good" and json.loads(body) == {"result": {"n": 1}}
    assert [r["args"] for r in records(api)] == [{"n": 1}]
    assert api.alive()


def test_many_bad_messages_then_a_good_one(api: Any, amqp: PikaClient, tmp_path: Path) -> None:
    kinds = ["not-json", "invalid-utf8", "pickle", "truncated", "nan"]
    for kind in kinds:
        body, ctype, _ = _bad(kind, tmp_path)
        amqp.publish(api.exchange, api.key, body, content_type=ctype)
    amqp.publish(api.exchange, api.key, {"method": "record", "args": {"good": True}})
    (rec,) = wait_for(lambda: records(api), 10, message="the good message handled")
    assert rec["args"] == {"good": True}
    wait_for(lambda: queue_drained(api.queue), 10, message="queue drained")
    assert len([line for line in api.log().splitlines() if "refused" in line]) == len(kinds)
    assert api.alive() and not (tmp_path / "PWNED").exists()


def test_body_over_max_message_size_is_refused_undecoded(
    workers: Workers, amqp: PikaClient, uid: str
) -> None:
    d = workers.start(
        {
            "api": {
                "type": "direct",
                "handler": "recorder",
                "exchange": f"ex-{uid}",
                "queue": f"q-{uid}",
                "routing_key": f"rk-{uid}",
            }
        },
        default={"max_message_size": 4096},
    )
    big = {"method": "record", "args": {"pad": "x" * 5000}}
    amqp.publish(f"ex-{uid}", f"rk-{uid}", big)
    wait_for(
        lambda: "over max_message_size (4096)" in d.log(),
        10,
        message="the size refusal in the daemon log",
    )
    amqp.publish(f"ex-{uid}", f"rk-{uid}", {"method": "record", "args": {"small": 1}})
    (rec,) = wait_for(lambda: records(d), 10, message="the small message handled")
    assert rec["args"] == {"small": 1}
    wait_for(lambda: queue_drained(f"q-{uid}"), 10, message="queue drained")
