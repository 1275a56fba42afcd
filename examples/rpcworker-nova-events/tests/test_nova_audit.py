"""The nova_instance_audit plugin, tested without a broker (rpcworker.testing): the
notifications Nova sends, as an oslo Notifier sends them, then the RPC method."""

from __future__ import annotations

from collections.abc import Callable

from rpcworker_nova_events.audit import InstanceAudit

from rpcworker.testing import ACKED, DEAD_LETTERED, HandlerFixture

Factory = Callable[..., HandlerFixture]
CTXT = {"user_id": "u1", "project_id": "p1", "request_id": "req-1"}


def test_instance_notifications_make_an_audit_trail(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(InstanceAudit, binding_options={"max_retries": 0})
    fx.notify(
        "compute.instance.create.start",
        {"instance_id": "i-1"},
        publisher_id="compute.host1",
        ctxt=CTXT,
    )
    fx.notify(
        "compute.instance.create.end",
        {"instance_id": "i-1"},
        publisher_id="compute.host1",
        ctxt=CTXT,
    )
    fx.notify(
        "compute.instance.delete.error",
        {"nova_object.data": {"uuid": "i-1"}},
        priority="error",
        publisher_id="compute.host2",
        ctxt=CTXT,
    )  # a versioned payload
    fx.notify("image.update", {"id": "img"}, publisher_id="image.host")  # not Nova's
    fx.wait_for_outcomes(4, kind="notification")
    history = fx.call("history", instance_id="i-1")  # handled by a pool: in any order
    assert sorted((e["action"], e["failed"], e["host"]) for e in history) == [
        ("create.end", False, "host1"),
        ("create.start", False, "host1"),
        ("delete.error", True, "host2"),
    ]
    assert all(e["user_id"] == "u1" and e["message_id"] for e in history)
    assert {o.action for o in fx.outcomes if o.kind == "notification"} == {ACKED}


def test_a_notification_without_an_instance_is_parked(rpcworker_handler: Factory) -> None:
    fx = rpcworker_handler(InstanceAudit)
    fx.notify("compute.instance.create.end", {"no": "id"})
    [parked] = fx.wait_for_outcomes(action=DEAD_LETTERED, kind="notification")
    assert parked.method == "info" and "no instance id" in (parked.reason or "")
    assert fx.call("history", instance_id="i-1") == []


def test_the_binding_filter_keeps_other_events_from_the_handler() -> None:
    with HandlerFixture(
        InstanceAudit, binding_options={"filter_event_type": r"compute\.instance\.create\."}
    ) as fx:
        fx.notify("compute.instance.create.end", {"instance_id": "i-2"})
        fx.notify("compute.instance.delete.end", {"instance_id": "i-2"})
        fx.wait_for_outcomes(2, kind="notification")
        assert [e["action"] for e in fx.call("history", instance_id="i-2")] == ["create.end"]
