"""failures: the delay queues and parking lot of quorum bindings."""

from __future__ import annotations

import dataclasses

import kombu

from rpcworker.amqp import topology
from rpcworker.config.bindingconf import Binding
from rpcworker.policy import failures

CLASSIC = Binding(
    name="d",
    type="direct",
    handler="log",
    exchange="ex",
    durable=True,
    prefetch_count=5,
    acknowledge="after",
    queue="work",
    routing_keys=("k",),
    max_retries=2,
    retry_delay=0.2,
    dead_letter_queue="parked",
)
QUORUM = dataclasses.replace(
    CLASSIC, queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 2}
)


def delay_queues(b: Binding) -> list[tuple[str, bool, dict[str, object]]]:
    [q] = topology.build(b).queues
    return [(d.name, d.durable, d.queue_arguments) for d in topology.retry_queues(b, q)]


def test_quorum_delay_queues_are_quorum_and_named_apart() -> None:
    assert delay_queues(QUORUM) == [
        (
            f"work.retry.{ttl}.quorum",
            True,
            {
                "x-message-ttl": ttl,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "work",
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for ttl in (200, 400)
    ]
    assert [name for name, _, _ in delay_queues(CLASSIC)] == ["work.retry.200", "work.retry.400"]
    assert all("x-queue-type" not in args for _, _, args in delay_queues(CLASSIC))


def test_retry_copy_goes_to_the_queue_s_own_kind_of_delay_queue() -> None:
    copy = failures.retry_copy(QUORUM, "work", b"{}", {}, None, "boom")
    assert (copy.exchange, copy.routing_key) == ("", "work.retry.200.quorum")
    assert failures.retry_copy(CLASSIC, "work", b"{}", {}, None, None).routing_key == (
        "work.retry.200"
    )


def test_per_process_queues_get_no_delay_queues() -> None:
    """As many queues per process as oslo.messaging: the rpc binding's TOPIC_fanout_<uuid>
    (x-expires) and a fanout binding's exclusive queue have no delay queue of their own."""
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
        max_retries=3,
    )
    topo = topology.build(b, instance_id="abc")
    topic_q, server_q, fanout_q = topo.queues
    assert [q.name for q in topology.retry_queues(b, topic_q)] == [
        "c.retry.1000.quorum",
        "c.retry.2000.quorum",
        "c.retry.4000.quorum",
    ]
    assert topology.retry_queues(b, server_q)  # TOPIC.HOST is shared by restarts: durable
    assert topo.transient == (fanout_q.name,) and topology.is_transient(fanout_q)
    assert topology.retry_queues(b, fanout_q) == []
    exclusive = kombu.Queue("f", exclusive=True)
    assert topology.retry_queues(b, exclusive) == [] and not topology.can_retry(exclusive)


def test_quorum_binding_parking_lot_is_a_quorum_queue() -> None:
    _, parked = topology.parking_lot(QUORUM)
    assert parked is not None and parked.durable
    assert parked.queue_arguments == {"x-queue-type": "quorum"}
    _, classic = topology.parking_lot(CLASSIC)
    assert classic is not None and not classic.queue_arguments
    exchange, routed = topology.parking_lot(dataclasses.replace(QUORUM, dead_letter_exchange="dlx"))
    assert exchange is not None and routed is not None
    assert routed.queue_arguments == {"x-queue-type": "quorum"}
