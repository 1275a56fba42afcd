"""``[oslo_messaging_rabbit]``: rpc and notification bindings declare what an
oslo.messaging 18 server with the same options declares, checked against oslo's own
``impl_rabbit`` code (its queue-argument builder and its durable/auto-delete rules)."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from oslo_config import cfg
from oslo_messaging._drivers import impl_rabbit

from rpcworker.amqp import deprecations, topology
from rpcworker.client.connect import OsloFlags, control_exchange
from rpcworker.config import bindingconf
from rpcworker.errors import ConfigError

MakeConf = Callable[..., cfg.ConfigOpts]

RPC = """
[DEFAULT]
host = h1
bindings = compute
[binding:compute]
type = rpc
handler = echo
{binding}
[oslo_messaging_rabbit]
{oslo}
"""


def text(oslo: str = "", binding: str = "") -> str:
    return RPC.format(oslo=textwrap.dedent(oslo).strip(), binding=textwrap.dedent(binding).strip())


def rpc(make_conf: MakeConf, oslo: str = "", binding: str = "") -> bindingconf.Binding:
    [b] = bindingconf.parse(make_conf(text(oslo, binding)))
    return b


def error_of(make_conf: MakeConf, oslo: str = "", binding: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        bindingconf.parse(make_conf(text(oslo, binding)))
    return info.value


def _oslo_args(ttl: int, quorum: bool, limits: tuple[int, int, int], stream: bool) -> Any:
    """oslo.messaging's own ``_get_queue_arguments`` (no HA queues)."""
    config = impl_rabbit.QuorumMemConfig(*limits)
    return impl_rabbit._get_queue_arguments(False, ttl, quorum, config, stream)


MODES = [
    dict(zip(("quorum", "transient", "stream", "durable", "ttl"), combo, strict=True))
    for combo in itertools.product(
        (False, True), (False, True), (False, True), (False, True), (0, 60)
    )
    if not (combo[2] and not combo[1])  # stream needs transient quorum (oslo refuses)
]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_rpc_binding_declares_what_oslo_declares(make_conf: MakeConf, mode: dict[str, Any]) -> None:
    limits = (5, 1000, 2**20) if mode["quorum"] or mode["transient"] else (0, 0, 0)
    b = rpc(
        make_conf,
        f"""
        rabbit_quorum_queue = {mode["quorum"]}
        rabbit_transient_quorum_queue = {mode["transient"]}
        rabbit_stream_fanout = {mode["stream"]}
        amqp_durable_queues = {mode["durable"]}
        rabbit_transient_queues_ttl = {mode["ttl"]}
        rabbit_quorum_delivery_limit = {limits[0]}
        rabbit_quorum_max_memory_length = {limits[1]}
        rabbit_quorum_max_memory_bytes = {limits[2]}
        rabbit_qos_prefetch_count = 10
        """,
    )
    t = topology.build(b, "abc")
    topic_q, server_q, fanout_q = t.queues
    # declare_topic_consumer: durable = amqp_durable_queues or rabbit_quorum_queue, no TTL
    durable = mode["durable"] or mode["quorum"]
    want_topic = _oslo_args(0, mode["quorum"], limits, False)
    for q, name in ((topic_q, "compute"), (server_q, "compute.h1")):
        assert q.name == name and q.durable is durable and q.auto_delete is False
        assert (q.queue_arguments or {}) == want_topic
        assert q.exchange.name == "openstack" and q.exchange.durable is durable
    # declare_fanout_consumer: durable = transient quorum or stream; TTL; exchange auto-delete
    want_fanout = _oslo_args(mode["ttl"], mode["transient"], limits, mode["stream"])
    fanout_durable = mode["transient"] or mode["stream"]
    assert (fanout_q.queue_arguments or {}) == want_fanout
    assert fanout_q.durable is fanout_durable and fanout_q.auto_delete is False
    assert fanout_q.exchange.name == "compute_fanout" and fanout_q.exchange.type == "fanout"
    assert fanout_q.exchange.durable is fanout_durable and fanout_q.exchange.auto_delete is True
    assert fanout_q.name == ("compute_fanout" if mode["stream"] else "compute_fanout_abc")
    assert b.prefetch_count == 10  # rabbit_qos_prefetch_count
    # oslo deletes its fanout queue on close unless it is the shared stream
    assert t.transient == (() if mode["stream"] else ("compute_fanout_abc",))
    # failures of a per-process queue or the stream are never retried through delay queues
    assert topology.retry_queues(b, fanout_q) == []
    assert topology.retry_queues(b, topic_q) != []


def test_notification_binding_declares_what_oslos_notifier_declares(make_conf: MakeConf) -> None:
    [b] = bindingconf.parse(
        make_conf(
            """
            [DEFAULT]
            bindings = audit
            [binding:audit]
            type = notification
            handler = notified
            priorities = info
            [oslo_messaging_rabbit]
            rabbit_quorum_queue = true
            rabbit_quorum_delivery_limit = 7
            """
        )
    )
    [q] = topology.build(b).queues
    # _publish_and_creates_default_queue: durable as the exchange, oslo's quorum arguments
    assert q.name == "notifications.info" and q.durable is True
    assert q.queue_arguments == _oslo_args(0, True, (7, 0, 0), False)


def test_a_bindings_own_options_win(make_conf: MakeConf) -> None:
    oslo = """
        rabbit_quorum_queue = true
        rabbit_quorum_delivery_limit = 7
        rabbit_qos_prefetch_count = 10
    """
    b = rpc(make_conf, oslo, "queue_type = classic\ndurable = false\nprefetch_count = 3")
    assert not b.quorum and b.durable is False and b.prefetch_count == 3
    b = rpc(make_conf, oslo, "delivery_limit = 2")
    assert b.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 2}
    # 0 leaves rpcworker's default window, never oslo's "unlimited"
    assert rpc(make_conf, "rabbit_qos_prefetch_count = 0").prefetch_count == 64


def test_the_group_is_for_oslo_shaped_bindings_only(make_conf: MakeConf) -> None:
    [b] = bindingconf.parse(
        make_conf(
            """
            [DEFAULT]
            bindings = jobs
            [binding:jobs]
            type = direct
            handler = echo
            routing_key = k
            [oslo_messaging_rabbit]
            rabbit_quorum_queue = true
            rabbit_qos_prefetch_count = 5
            """
        )
    )
    assert not b.quorum and b.prefetch_count == 64


@pytest.mark.parametrize(
    "oslo,binding,group,option,words",
    [
        (
            "rabbit_stream_fanout = true",
            "",
            "oslo_messaging_rabbit",
            "rabbit_stream_fanout",
            "needs rabbit_transient_quorum_queue = true",
        ),
        (
            "rabbit_stream_fanout = true\nrabbit_transient_quorum_queue = true",
            "prefetch_count = 0",
            "binding:compute",
            "prefetch_count",
            "cannot read a stream",
        ),
        (
            "rabbit_quorum_queue = true\namqp_auto_delete = true",
            "",
            "oslo_messaging_rabbit",
            "amqp_auto_delete",
            "quorum queues cannot be auto-delete",
        ),
        (
            "use_queue_manager = true\nprocessname = two words",
            "",
            "oslo_messaging_rabbit",
            "processname",
            "non-empty word",
        ),
    ],
)
def test_combinations_oslo_refuses_are_config_errors(
    make_conf: MakeConf, oslo: str, binding: str, group: str, option: str, words: str
) -> None:
    err = error_of(make_conf, oslo, binding)
    assert (err.group, err.option) == (group, option) and words in err.reason


def test_queue_manager_names_are_stable_and_unique_per_process(make_conf: MakeConf) -> None:
    b = rpc(make_conf, "use_queue_manager = true\nhostname = node1\nprocessname = nova-api")
    names = [topology.build(b, topology.process_instance([b], w)).queues[2].name for w in range(3)]
    assert names == [f"compute_fanout_node1:nova-api:{n}" for n in (1, 2, 3)]
    # the same process after a restart: the same name; not deleted on a clean stop
    assert topology.process_instance([b], 1) == "node1:nova-api:2"
    assert topology.build(b, "node1:nova-api:2").transient == ()
    plain = rpc(make_conf)
    assert topology.process_instance([plain], 0) != topology.process_instance([plain], 0)


def test_a_refused_deprecated_feature_names_binding_queue_feature_and_option(
    make_conf: MakeConf,
) -> None:
    text = (
        "Queue.declare: (541) INTERNAL_ERROR - Feature `transient_nonexcl_queues` is "
        "deprecated.\nBy default, this feature can still be used for now."
    )
    assert deprecations.refused_feature(Exception(text)) == "transient_nonexcl_queues"
    assert deprecations.refused_feature(Exception("NOT_FOUND - no queue 'x'")) is None
    b = rpc(make_conf)
    fanout = deprecations.Refused(b, "compute_fanout_abc", "transient_nonexcl_queues")
    assert (fanout.group, fanout.option) == (
        "oslo_messaging_rabbit",
        "rabbit_transient_quorum_queue",
    )
    assert "binding compute" in str(fanout) and "'compute_fanout_abc'" in str(fanout)
    assert "transient_nonexcl_queues" in str(fanout)
    work = deprecations.Refused(b, "compute.h1", "transient_nonexcl_queues")
    assert work.option == "rabbit_quorum_queue" and "delete_queue compute.h1" in str(work)
    delay = deprecations.Refused(b, "compute.retry.1000", "transient_nonexcl_queues")
    assert delay.option == "rabbit_quorum_queue"


def test_the_client_declares_as_oslo_with_the_same_group(make_conf: MakeConf) -> None:
    conf = make_conf(
        text(
            "rabbit_quorum_queue = true\nrabbit_transient_quorum_queue = true\n"
            "rabbit_quorum_delivery_limit = 3",
            "exchange = nova",
        )
    )
    flags = OsloFlags.of(conf)
    assert flags == OsloFlags(
        durable=True,
        queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 3},
        fanout_durable=True,
    )
    assert control_exchange(conf, "compute") == "nova"
    assert control_exchange(conf, "other") == "openstack"
