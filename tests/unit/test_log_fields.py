"""How log lines about a message name it: logfields.what / log_fields, the refusal
line; and the same fields as ``extra`` (separate keys with ``use_json``). The lines of
what the decisions say happened are ``test_telling``'s."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from rpcworker.engine.ratelimit import LogLimiter
from rpcworker.engine.telling import Refusals
from rpcworker.wire import decoding, logfields
from rpcworker.wire.logfields import describe as _describe


def call(**kw: Any) -> decoding.Request:
    return decoding.Request(
        body=None,
        method="m",
        unique_id="u1",
        reply=decoding.ReplyRoute("oslo", "reply_q", msg_id="m1"),
        **kw,
    )


def test_what_and_fields() -> None:
    req = call()
    assert logfields.what(req) == "call 'm' (msg_id='m1', unique_id='u1')"
    assert logfields.log_fields("b", req) == {
        "binding": "b",
        "method": "m",
        "msg_id": "m1",
        "unique_id": "u1",
    }
    cast = decoding.Request(body=None, method="m", unique_id="u2")
    assert logfields.what(cast) == "cast 'm' (unique_id='u2')"
    bare = decoding.Request(body=None, method="m")
    assert logfields.what(bare) == "cast 'm' (no id)"
    amqp_rpc = decoding.Request(
        body=None,
        method="m",
        properties={"message_id": "x"},
        reply=decoding.ReplyRoute("amqp", "rq", correlation_id="c1"),
    )
    assert logfields.what(amqp_rpc) == "call 'm' (correlation_id='c1', message_id='x')"
    event = decoding.Request(
        body=None, exchange="ex", routing_key="a.b", unique_id="e1", properties={"message_id": "e1"}
    )
    assert logfields.what(event) == "event (exchange 'ex', routing key 'a.b'; message_id='e1')"
    assert logfields.log_fields("b", event) == {
        "binding": "b",
        "method": "event",
        "message_id": "e1",
    }
    anonymous = decoding.Request(body=None, exchange="ex", routing_key="k")
    assert logfields.what(anonymous) == "event (exchange 'ex', routing key 'k')"
    assert logfields.log_fields("b", None) == {"binding": "b"}


def test_ids_cannot_forge_log_lines() -> None:
    req = decoding.Request(body=None, method="m", unique_id="u\nFAKE LINE")
    assert "\n" not in logfields.what(req)


def test_refusal_line_names_the_message_id(caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals(LogLimiter())
    binding: Any = SimpleNamespace(name="api")
    message = SimpleNamespace(
        delivery_info={"exchange": "ex", "routing_key": "rk"},
        content_type="text/plain",
        properties={"message_id": "id-1"},
    )
    caplog.set_level(logging.WARNING, logger="rpcworker.engine")
    refusals.log(binding, message, "content type 'text/plain' refused")
    refusals.log(binding, message, "NoSuchMethod: x", call())
    first, second = caplog.records
    assert first.getMessage() == (
        "binding api: message (exchange 'ex', routing key 'rk', "
        "content type 'text/plain', message_id='id-1') refused: "
        "content type 'text/plain' refused"
    )
    assert (first.binding, first.message_id) == ("api", "id-1")  # type: ignore[attr-defined]
    assert "content type 'text/plain', msg_id='m1', unique_id='u1')" in second.getMessage()
    assert (second.method, second.msg_id) == ("m", "m1")  # type: ignore[attr-defined]
    # no message_id property: as before
    assert _describe(SimpleNamespace(delivery_info={}, content_type="")) == (
        "(exchange '', routing key '', content type '')"
    )
