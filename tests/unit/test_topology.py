from __future__ import annotations

from rpcworker.amqp import topology
from rpcworker.config.bindingconf import Binding


def test_rpc_topology_is_oslo_messaging_s() -> None:
    b = Binding(
        name="compute",
        type="rpc",
        handler="echo",
        exchange="nova",
        durable=False,
        prefetch_count=0,
        acknowledge="after",
        topic="compute",
        server="host1",
    )
    t = topology.build(b, instance_id="abc")
    topic_q, server_q, fanout_q = t.queues
    for q, key in ((topic_q, "compute"), (server_q, "compute.host1")):
        assert q.name == key and q.routing_key == key
        assert (q.exchange.name, q.exchange.type) == ("nova", "topic")
        assert not q.exchange.durable and not q.exchange.auto_delete
        assert not q.durable and not q.auto_delete and not q.exclusive
        assert not q.queue_arguments
    assert fanout_q.name == "compute_fanout_abc" and fanout_q.routing_key == "compute"
    assert (fanout_q.exchange.name, fanout_q.exchange.type) == ("compute_fanout", "fanout")
    assert not fanout_q.exchange.durable and fanout_q.exchange.auto_delete
    assert not fanout_q.durable and not fanout_q.auto_delete and not fanout_q.exclusive
    assert fanout_q.queue_arguments == {"x-expires": 1800000}
    assert t.transient == ("compute_fanout_abc",)


def test_durable_quorum_rpc() -> None:
    b = Binding(
        name="c",
        type="rpc",
        handler="echo",
        exchange="openstack",
        durable=True,
        prefetch_count=0,
        acknowledge="after",
        topic="c",
        server="h",
        queue_arguments={"x-queue-type": "quorum"},
    )
    topic_q, _, fanout_q = topology.build(b).queues
    assert topic_q.durable and topic_q.exchange.durable
    assert topic_q.queue_arguments == {"x-queue-type": "quorum"}
    assert fanout_q.queue_arguments == {"x-expires": 1800000}


def test_topic_binding_has_one_binding_per_key() -> None:
    b = Binding(
        name="audit",
        type="topic",
        handler="log",
        exchange="events",
        durable=True,
        prefetch_count=5,
        acknowledge="after",
        queue="audit",
        routing_keys=("a.*", "b.#"),
        queue_arguments={"x-max-length": 10},
    )
    [q] = topology.build(b).queues
    assert q.name == "audit" and q.durable and q.queue_arguments == {"x-max-length": 10}
    assert sorted((bd.exchange.name, bd.exchange.type, bd.routing_key) for bd in q.bindings) == [
        ("events", "topic", "a.*"),
        ("events", "topic", "b.#"),
    ]


def test_fanout_default_queue_is_exclusive_and_named_per_process() -> None:
    b = Binding(
        name="bc",
        type="fanout",
        handler="log",
        exchange="bc",
        durable=False,
        prefetch_count=5,
        acknowledge="after",
        auto_delete=True,
        exclusive=True,
    )
    t1, t2 = topology.build(b), topology.build(b)
    assert t1.queues[0].name != t2.queues[0].name
    assert t1.queues[0].exclusive and t1.queues[0].auto_delete
    lines = topology.describe(t1)
    assert lines[0].startswith("binding bc (type fanout") and "exclusive=True" in lines[-1]


OSLO_QUORUM = Binding(
    name="c",
    type="rpc",
    handler="echo",
    exchange="nova",
    durable=True,
    prefetch_count=0,
    acknowledge="after",
    topic="c",
    server="h",
    queue_arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": 3,
        "x-max-in-memory-length": 100,
    },
)


def test_quorum_rpc_binding_declares_what_oslo_declares() -> None:
    """oslo.messaging with rabbit_quorum_queue=True, rabbit_quorum_delivery_limit=3,
    rabbit_quorum_max_memory_length=100 (impl_rabbit._get_queue_arguments): the
    exchange and both topic queues durable, the arguments exactly; fanout unchanged."""
    topic_q, server_q, fanout_q = topology.build(OSLO_QUORUM, instance_id="abc").queues
    for q, key in ((topic_q, "c"), (server_q, "c.h")):
        assert (q.name, q.routing_key, q.exchange.name, q.exchange.type) == (
            key,
            key,
            "nova",
            "topic",
        )
        assert q.durable and not q.auto_delete and not q.exclusive
        assert q.exchange.durable and not q.exchange.auto_delete
        assert q.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 3,
            "x-max-in-memory-length": 100,
        }
    assert fanout_q.name == "c_fanout_abc" and not fanout_q.durable
    assert fanout_q.queue_arguments == {"x-expires": 1800000}
    assert not fanout_q.exchange.durable and fanout_q.exchange.auto_delete


def test_quorum_direct_binding() -> None:
    b = Binding(
        name="d",
        type="direct",
        handler="log",
        exchange="ex",
        durable=True,
        prefetch_count=5,
        acknowledge="after",
        queue="work",
        routing_keys=("k",),
        queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 2},
    )
    [q] = topology.build(b).queues
    assert q.name == "work" and q.durable and not q.auto_delete and not q.exclusive
    assert q.queue_arguments == {"x-queue-type": "quorum", "x-delivery-limit": 2}
    assert "x-delivery-limit" in topology.describe(topology.build(b))[-1]
