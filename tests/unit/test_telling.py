"""The teller: the one place that words and logs what the decisions say happened to a
delivery, with the binding, the message and its ids in every line (and as ``extra``
fields for ``use_json``)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from oslo_log import formatters

from rpcworker.engine.inflight import run
from rpcworker.engine.telling import WORDS, Teller
from rpcworker.policy.outcomes import Action, Delivery, Happened, Note, Outcome
from rpcworker.wire import decoding
from tests.fakes import AFTER


def call(**kw: Any) -> decoding.Request:
    return decoding.Request(
        body=None,
        method="m",
        unique_id="u1",
        reply=decoding.ReplyRoute("oslo", "reply_q", msg_id="m1"),
        **kw,
    )


class Failing:
    def m(self, ctxt: dict[str, Any]) -> None:
        raise ValueError("boom")


def test_every_note_has_its_words() -> None:
    assert set(WORDS) == set(Happened)


@pytest.mark.parametrize("happened", list(Happened))
def test_each_note_is_one_line_naming_binding_and_message(
    happened: Happened, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpcworker.engine.telling")
    error = ValueError("why\nit failed")
    Teller().note(Delivery(None, AFTER, "q", call()), Note(happened, "the detail", error))
    [record] = caplog.records
    assert record.levelno == WORDS[happened][0]
    text = record.getMessage()
    assert text.startswith("binding b: ") and "%(" not in text, text
    named = "call 'm' (msg_id='m1', unique_id='u1')" in text
    assert named or happened is Happened.TIMED_OUT, text  # a timeout names it in its error
    assert (record.exc_info is not None) is (happened is Happened.FAILED)
    assert (record.binding, record.method) == ("b", "m")  # type: ignore[attr-defined]


def test_failure_line_carries_the_fields_as_extra(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="rpcworker")
    request = call()
    outcome = run(Failing(), AFTER, request)
    assert not caplog.records  # deciding logs nothing; the teller tells it
    Teller().tell(Delivery(None, AFTER, "q", request), outcome)
    [record] = caplog.records
    assert "failed on call 'm' (msg_id='m1', unique_id='u1')" in record.getMessage()
    assert (record.binding, record.method, record.msg_id, record.unique_id) == (  # type: ignore[attr-defined]
        "b",
        "m",
        "m1",
        "u1",
    )
    # oslo.log's JSONFormatter keeps them, as keys of "extra"
    line = json.loads(formatters.JSONFormatter().format(record))
    assert {k: line["extra"][k] for k in ("binding", "method", "msg_id", "unique_id")} == {
        "binding": "b",
        "method": "m",
        "msg_id": "m1",
        "unique_id": "u1",
    }
    assert "ValueError: boom" in "".join(line["traceback"])


def test_a_refusal_is_told_once_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rpcworker.engine.telling")
    teller = Teller()
    message = type(
        "M",
        (),
        {
            "delivery_info": {"exchange": "ex", "routing_key": "k"},
            "content_type": "text/plain",
            "properties": {},
        },
    )()
    refused = Outcome(Action.DEAD_LETTER, reason="refused: bad", refusal="bad")
    for _ in range(15):
        teller.tell(Delivery(message, AFTER, "q", None), refused)
    assert len(caplog.records) == 10  # the rest are summarised when their window ends
    teller.summarise(final=True)
    assert "5 more messages refused" in caplog.records[-1].getMessage()
