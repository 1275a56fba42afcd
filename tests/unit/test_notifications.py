"""Notification bindings without a broker: configuration, priorities against the handler,
topology, decoding, the policy's screening and the test kit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rpcworker.amqp import topology
from rpcworker.config import bindingconf, handlerapi, plugins
from rpcworker.engine.inflight import run
from rpcworker.errors import ConfigError
from rpcworker.policy import decisions, outcomes
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.outcomes import Action
from rpcworker.testing import DEAD_LETTERED, HandlerFixture
from rpcworker.wire import decoding, envelope

BASE = "[DEFAULT]\nbindings = n\n[binding:n]\ntype = notification\nhandler = h\n"


class Handler:
    def __init__(self, conf: Any = None) -> None:
        self.got: list[tuple[Any, ...]] = []

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> Any:
        self.got.append((ctxt, publisher_id, event_type, payload, metadata))
        return payload.get("answer") if isinstance(payload, dict) else None

    def error(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> None:
        raise ValueError("boom")

    def _audit(self, *args: Any) -> None:  # private: never a priority method
        raise AssertionError


def parse(make_conf: Any, extra: str = "") -> bindingconf.Binding:
    [b] = bindingconf.parse(make_conf(BASE + extra))
    return b


def test_defaults_and_lists(make_conf: Any) -> None:
    b = parse(make_conf)
    assert (b.exchanges, b.topics, b.priorities, b.pool, b.durable) == (
        ("openstack",),
        ("notifications",),
        (),
        None,
        False,
    )
    b = parse(
        make_conf,
        "exchange = nova, glance\ntopic = notifications, versioned\n"
        "priorities = INFO, error, info\npool = billing\n",
    )
    assert b.exchanges == ("nova", "glance") and b.topics == ("notifications", "versioned")
    assert b.priorities == ("info", "error") and b.pool == "billing"
    assert b.work_queues == ("billing",)


@pytest.mark.parametrize(
    "extra, option",
    [
        ("priorities = loud\n", "priorities"),
        ("queue = q\n", "queue"),
        ("routing_key = k\n", "routing_key"),
        ("server = s\n", "server"),
        ("filter_event_type = (\n", "filter_event_type"),
        ("exchange = ,\n", "exchange"),
        ("pool = amq.x\n", "pool"),
        ("queue_type = quorum\ndurable = false\n", "durable"),
    ],
)
def test_bad_notification_options_name_the_option(make_conf: Any, extra: str, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(make_conf, extra)
    assert (info.value.group, info.value.option) == ("binding:n", option)


def test_notification_options_are_refused_elsewhere(make_conf: Any) -> None:
    text = "[DEFAULT]\nbindings = t\n[binding:t]\ntype = topic\nhandler = h\npool = p\n"
    with pytest.raises(ConfigError, match=r"^\[binding:t\] pool: only used by notification"):
        bindingconf.parse(make_conf(text))


def test_priorities_are_resolved_against_the_handler(make_conf: Any) -> None:
    [b] = plugins.resolve_priorities([parse(make_conf)], {"h": Handler()})
    assert b.priorities == ("info", "error")
    assert handlerapi.priorities_of(Handler) == ("info", "error")
    with pytest.raises(ConfigError) as info:
        plugins.resolve_priorities(
            [parse(make_conf, "priorities = info, sample\n")], {"h": Handler()}
        )
    assert str(info.value) == (
        "[binding:n] priorities: handler 'h' has no sample() method (it has: info, error)"
    )
    with pytest.raises(
        ConfigError,
        match=r"^\[binding:n\] handler: handler 'h' has no "
        "method for any notification priority",
    ):
        plugins.resolve_priorities([parse(make_conf)], {"h": object()})


def test_topology_is_oslos(make_conf: Any) -> None:
    b = plugins.resolve_priorities(
        [parse(make_conf, "exchange = nova, glance\n")], {"h": Handler()}
    )[0]
    t = topology.build(b)
    assert [q.name for q in t.queues] == ["notifications.info", "notifications.error"]
    for q in t.queues:
        assert (q.durable, q.auto_delete, q.exclusive) == (False, False, False)
        assert sorted((bd.exchange.name, bd.routing_key) for bd in q.bindings) == [
            ("glance", q.name),
            ("nova", q.name),
        ]
        assert all(bd.exchange.type == "topic" and not bd.exchange.durable for bd in q.bindings)
    pooled = topology.build(
        plugins.resolve_priorities(
            [parse(make_conf, "pool = billing\nqueue_type = quorum\n")], {"h": Handler()}
        )[0]
    )
    [q] = pooled.queues
    assert q.name == "billing" and q.durable
    assert q.queue_arguments == {"x-queue-type": "quorum"}
    assert sorted(bd.routing_key for bd in q.bindings) == [
        "notifications.error",
        "notifications.info",
    ]


def oslo_body(priority: str = "INFO", **extra: Any) -> bytes:
    inner = envelope.oslo_notification(
        priority,
        "compute.instance.create.end",
        {"instance_id": "i-1"},
        "compute.h1",
        {"user": "u1", "request_id": "r-1"},
        "m-1",
    )
    inner.update(extra)
    return envelope.envelope(inner)


def decoded(body: bytes) -> decoding.Request | decoding.Rejected:
    req = decoding.decode(body, "application/json", "utf-8")
    assert isinstance(req, decoding.Request)
    return decoding.as_notification(req)


def test_decoding_envelope_2_and_bare_1_0() -> None:
    body = oslo_body()
    req = decoded(body)
    assert isinstance(req, decoding.Request) and req.notification is not None
    n = req.notification
    assert (n.priority, n.publisher_id, n.event_type, n.payload) == (
        "info",
        "compute.h1",
        "compute.instance.create.end",
        {"instance_id": "i-1"},
    )
    assert n.context == {"user": "u1", "request_id": "r-1"}
    assert n.metadata["message_id"] == "m-1" and n.metadata["timestamp"]
    assert req.unique_id == "m-1"  # the duplicate cache's id
    bare = json.loads(json.loads(body)["oslo.message"])
    req10 = decoded(json.dumps(bare).encode())
    assert isinstance(req10, decoding.Request) and req10.notification == n
    assert isinstance(decoded(b"[1, 2]"), decoding.Rejected)
    rpc = json.dumps({"method": "m", "args": {}}).encode()
    assert isinstance(decoded(rpc), decoding.Rejected)


def test_policy_screens_runs_and_retries(make_conf: Any) -> None:
    b = plugins.resolve_priorities(
        [parse(make_conf, "max_retries = 2\nfilter_event_type = compute\\.\n")], {"h": Handler()}
    )[0]
    h = Handler()
    req = decoded(oslo_body())
    assert isinstance(req, decoding.Request)
    assert decisions.on_receipt(b, req, h, CompletedCache(10), draining=False) is outcomes.RUN
    other = decoded(oslo_body(event_type="image.update"))
    assert decisions.on_receipt(b, other, h, CompletedCache(10), draining=False) == (
        outcomes.Outcome(Action.ACK, filtered=True)
    )
    warn = decoded(oslo_body("WARN"))  # the handler has no warn(): acked, not run
    out = decisions.on_receipt(b, warn, h, CompletedCache(10), draining=False)
    assert isinstance(out, outcomes.Outcome) and out.action is Action.ACK and not out.filtered
    assert run(h, b, req) == outcomes.Outcome(Action.ACK)
    assert h.got[0][1:3] == ("compute.h1", "compute.instance.create.end")
    requeue = decoded(oslo_body(payload={"answer": "requeue"}))
    assert isinstance(requeue, decoding.Request)
    out = run(h, b, requeue)
    assert out.action is Action.RETRY and "returned 'requeue'" in (out.reason or "")
    failing = decoded(oslo_body("ERROR"))
    assert isinstance(failing, decoding.Request)
    assert run(h, b, failing).action is Action.RETRY  # raised: the failure policy


def test_the_test_kit_delivers_notifications() -> None:
    with HandlerFixture(Handler, binding_options={"max_retries": 0}) as fx:
        fx.notify("compute.instance.create.end", {"instance_id": "i-9"}, ctxt={"user": "u"})
        fx.notify("compute.instance.create.error", {}, priority="error")
        [ok] = fx.wait_for_outcomes(kind="notification", action="acked")
        [parked] = fx.wait_for_outcomes(kind="notification", action=DEAD_LETTERED)
        assert ok.method == "info" and parked.method == "error"
        assert fx.handler.got[0][0] == {"user": "u"}


def test_two_bindings_on_the_same_default_queues_are_refused(make_conf: Any) -> None:
    text = (
        "[DEFAULT]\nbindings = a, b\n[binding:a]\ntype = notification\nhandler = h\n"
        "[binding:b]\ntype = notification\nhandler = h\n"
    )
    with pytest.raises(ConfigError) as info:
        plugins.resolve_priorities(bindingconf.parse(make_conf(text)), {"h": Handler()})
    assert str(info.value) == (
        "[binding:b] topic: queue 'notifications.info' is already consumed by binding 'a'"
    )


def test_list_handlers_shows_the_priorities() -> None:
    from rpcworker.config import plugins

    info = plugins.describe("h", "m:Handler", Handler)
    assert info.priorities == ("info", "error") and info.methods == ("error", "info")
