"""How log lines about a message name it: logfields.what / log_fields, the intake's
refusal line; and the same fields as ``extra`` (separate keys with ``use_json``)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from oslo_log import formatters

from rpcworker.engine.inflight import run
from rpcworker.engine.intake import Refusals
from rpcworker.engine.ratelimit import LogLimiter
from rpcworker.wire import decoding, logfields
from rpcworker.wire.logfields import describe as _describe
from tests.unit.test_dispatcher import AFTER


def call(**kw: Any) -> decoding.Request:
    return decoding.Request(body=None, method="m", unique_id="u1",
                            reply=decoding.ReplyRoute("oslo", "reply_q", msg_id="m1"), **kw)


def test_what_and_fields() -> None:
    req = call()
    assert logfields.what(req) == "call 'm' (msg_id='m1', unique_id='u1')"
    assert logfields.log_fields("b", req) == {"binding": "b", "method": "m", "msg_id": "m1",
                                               "unique_id": "u1"}
    cast = decoding.Request(body=None, method="m", unique_id="u2")
    assert logfields.what(cast) == "cast 'm' (unique_id='u2')"
    bare = decoding.Request(body=None, method="m")
    assert logfields.what(bare) == "cast 'm' (no id)"
    amqp_rpc = decoding.Request(body=None, method="m", properties={
        "message_id": "x"}, reply=decoding.ReplyRoute("amqp", "rq", correlation_id="c1"))
    assert logfields.what(amqp_rpc) == "call 'm' (correlation_id='c1', message_id='x')"
    event = decoding.Request(body=None, exchange="ex", routing_key="a.b",
                             unique_id="e1", properties={"message_id": "e1"})
    assert logfields.what(event) == "event (exchange 'ex', routing key 'a.b'; message_id='e1')"
    assert logfields.log_fields("b", event) == {"binding": "b", "method": "event",
                                                 "message_id": "e1"}
    anonymous = decoding.Request(body=None, exchange="ex", routing_key="k")
    assert logfields.what(anonymous) == "event (exchange 'ex', routing key 'k')"
    assert logfields.log_fields("b", None) == {"binding": "b"}


def test_ids_cannot_forge_log_lines() -> None:
    req = decoding.Request(body=None, method="m", unique_id="u\nFAKE LINE")
    assert "\n" not in logfields.what(req)


class Failing:
    def m(self, ctxt: dict[str, Any]) -> None:
        raise ValueError("boom")


def test_failure_line_carries_the_fields_as_extra(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="rpcworker.policy.decisions")
    run(Failing(), AFTER, call())
    [record] = caplog.records
    assert "failed on call 'm' (msg_id='m1', unique_id='u1')" in record.getMessage()
    assert (record.binding, record.method, record.msg_id, record.unique_id) == (  # type: ignore[attr-defined]
        "b", "m", "m1", "u1")
    # oslo.log's JSONFormatter keeps them, as keys of "extra"
    line = json.loads(formatters.JSONFormatter().format(record))
    assert {k: line["extra"][k] for k in ("binding", "method", "msg_id", "unique_id")} == {
        "binding": "b", "method": "m", "msg_id": "m1", "unique_id": "u1"}


def test_refusal_line_names_the_message_id(caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals(LogLimiter())
    binding: Any = SimpleNamespace(name="api")
    message = SimpleNamespace(delivery_info={"exchange": "ex", "routing_key": "rk"},
                              content_type="text/plain", properties={"message_id": "id-1"})
    caplog.set_level(logging.WARNING, logger="rpcworker.engine")
    refusals.log(binding, message, "content type 'text/plain' refused")
    refusals.log(binding, message, "NoSuchMethod: x", call())
    first, second = caplog.records
    assert first.getMessage() == ("binding api: message (exchange 'ex', routing key 'rk', "
                                  "content type 'text/plain', message_id='id-1') refused: "
                                  "content type 'text/plain' refused")
    assert (first.binding, first.message_id) == ("api", "id-1")  # type: ignore[attr-defined]
    assert "content type 'text/plain', msg_id='m1', unique_id='u1')" in second.getMessage()
    assert (second.method, second.msg_id) == ("m", "m1")  # type: ignore[attr-defined]
    # no message_id property: as before
    assert _describe(SimpleNamespace(delivery_info={}, content_type="")) == (
        "(exchange '', routing key '', content type '')")
