"""The mailer plugin, tested without a broker with rpcworker.testing (kombu memory://).

No __init__.py in this directory: pytest imports this file as a top-level module, so its
name must not clash with another test file collected in the same run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rpcworker_handler_example.mailer import MailerHandler

from rpcworker.testing import DEAD_LETTERED, RETRIED, HandlerFixture, RemoteFailure

MAILER = {"namespace": "mailer", "version": "2.1"}
Factory = Callable[..., HandlerFixture]


def test_calls_return_results(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(MailerHandler, **MAILER)
    mail_id = fx.call("send", ctxt={"user_id": "u1"}, to="ann@example.org", subject="hi")
    assert mail_id == "mail-1"
    status = fx.call("status", mail_id=mail_id)
    assert status["to"] == ["ann@example.org"] and status["user"] == "u1"
    assert status["from"] == "noreply@example.org"
    assert fx.call("send", to=["ann@example.org", "bob@example.org"], subject="s") == "mail-2"
    assert fx.call("sent_to", address="bob@example.org") == ["mail-2"]
    # plain AMQP RPC (any language) reaches the same methods
    assert fx.call_amqp("sent_to", address="ann@example.org") == ["mail-1", "mail-2"]
    # a failing call is answered with the error and acked, never retried
    with pytest.raises(RemoteFailure) as info:
        fx.call("status", mail_id="nope")
    assert info.value.exc_type == "KeyError"
    with pytest.raises(RemoteFailure) as info:
        fx.call("_recipients", to="x@example.org")
    assert info.value.exc_type == "NoSuchMethod"
    fx.wait_idle()
    assert fx.retried == [] and all(o.kind == "call" for o in fx.acked)
    failed = [o for o in fx.acked if o.failure]
    assert [(o.method, o.failure and o.failure["class"]) for o in failed] == [
        ("status", "KeyError"),
        ("_recipients", "NoSuchMethod"),
    ]


@pytest.mark.parametrize(
    "namespace,version,accepted",
    [
        ("mailer", "2.1", True),
        ("mailer", "2.0", True),  # an older minor of the same major: compatible
        ("mailer", "2.2", False),  # newer than the handler
        ("mailer", "1.9", False),  # another major
        (None, "2.0", False),  # the wrong namespace
    ],
)
def test_versioning(
    rpcworker_handler: Factory, namespace: str | None, version: str, accepted: bool
) -> None:
    fx = rpcworker_handler(MailerHandler, namespace=namespace, version=version)
    if accepted:
        assert fx.call("pause") is True
    else:
        with pytest.raises(RemoteFailure) as info:
            fx.call("pause")
        assert info.value.exc_type == "UnsupportedVersion"
        assert info.value.module == "oslo_messaging.rpc.dispatcher"
        fx.cast("pause")
        dead = fx.wait_for_outcomes(action=DEAD_LETTERED)
        assert dead[0].method == "pause" and dead[0].kind == "cast"
        assert fx.handler.paused is False


def test_own_options_and_reject(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(
        MailerHandler,
        config_text="""
        [mailer]
        sender = ops@example.com
        max_recipients = 2
        blocked_domains = spam.example, Junk.example
        """,
        **MAILER,
    )
    assert fx.handler.sender == "ops@example.com"
    with pytest.raises(RemoteFailure) as info:
        fx.call("send", to=["a@x.org", "b@x.org", "c@x.org"], subject="s")
    assert info.value.exc_type == "ValueError" and "max_recipients 2" in str(info.value)
    # Reject: a cast is dead-lettered at once, with the reason; a caller gets the error
    fx.cast("send", to="eve@junk.example", subject="s")
    [dead] = fx.wait_for_outcomes(action=DEAD_LETTERED, method="send")
    assert dead.retries == 0 and "blocked recipient domain: eve@junk.example" in str(dead.reason)
    with pytest.raises(RemoteFailure) as info:
        fx.call("send", to="eve@spam.example", subject="s")
    assert info.value.exc_type == "Reject"
    assert fx.handler.mails == {}


def test_requeue_retries_a_cast_then_dead_letters_it(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(MailerHandler, binding_options={"max_retries": 2}, **MAILER)
    fx.call("pause")
    fx.cast("send", to="ann@example.org", subject="later")
    [retry] = fx.wait_for_outcomes(action=RETRIED)
    assert retry.reason and "delivery is paused" in retry.reason and retry.retries == 0
    # memory:// has no TTL: release_retries() does what the delay queue's TTL does
    assert fx.release_retries() == 1
    fx.wait_for_outcomes(2, action=RETRIED)
    assert fx.release_retries() == 1
    [dead] = fx.wait_for_outcomes(action=DEAD_LETTERED)
    assert dead.retries == 2 and dead.method == "send"
    assert fx.worker.stats.retried == 2 and fx.worker.stats.dead_lettered == 1


def test_requeue_then_success(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(MailerHandler, **MAILER)
    fx.call("pause")
    fx.cast("send", to="ann@example.org", subject="later")
    fx.wait_for_outcomes(action=RETRIED)
    # a call is never retried: the caller gets Requeue as an error
    with pytest.raises(RemoteFailure) as info:
        fx.call("send", to="ann@example.org", subject="now")
    assert info.value.exc_type == "Requeue"
    fx.call("resume")
    fx.release_retries()
    [sent] = fx.wait_for_outcomes(action="acked", kind="cast")
    assert sent.retries == 1
    assert fx.call("sent_to", address="ann@example.org") == ["mail-1"]


def test_events(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(MailerHandler, **MAILER)
    first = fx.call("send", to="ann@example.org", subject="1")
    fx.call("send", to="bob@example.org", subject="2")
    fx.publish_event(
        {"event_type": "mail.bounced", "payload": {"mail_id": first}}, routing_key="mail.bounced"
    )
    fx.publish_event(
        {"event_type": "user.deleted", "email": "bob@example.org"}, routing_key="user.deleted"
    )
    fx.publish_event(
        {"event_type": "user.created", "email": "cy@example.org"}, routing_key="user.created"
    )  # ignored
    fx.publish_event(["not", "an", "event"], routing_key="junk")  # Reject
    fx.publish_event(
        {"event_type": "mail.bounced", "payload": {"mail_id": "mail-9"}},
        routing_key="mail.bounced.early",
    )  # Requeue
    fx.wait_idle()
    assert fx.call("status", mail_id=first)["state"] == "bounced"
    assert fx.call("sent_to", address="bob@example.org") == []
    # handlers run in a thread pool: outcomes come in any order
    events = {o.routing_key: o for o in fx.outcomes if o.kind == "event"}
    assert {k: o.action for k, o in events.items()} == {
        "mail.bounced": "acked",
        "user.deleted": "acked",
        "user.created": "acked",
        "junk": DEAD_LETTERED,
        "mail.bounced.early": RETRIED,
    }
    assert "not a mailer event" in str(events["junk"].reason)
    assert "unknown mail 'mail-9'" in str(events["mail.bounced.early"].reason)


def test_handler_fixture_as_context_manager() -> None:
    # without the pytest fixture: HandlerFixture is a context manager
    with HandlerFixture(MailerHandler, **MAILER) as fx:
        for n in range(20):
            fx.cast("send", to=f"u{n}@example.org", subject="bulk")
        fx.wait_idle()
        assert len(fx.acked) == 20 and len(fx.handler.mails) == 20
