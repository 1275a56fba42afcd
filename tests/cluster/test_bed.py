"""The cluster test bed works: three nodes in one cluster, a quorum queue replicated on all
of them that survives losing its leader, and nodes that rejoin after a stop or a crash."""

from __future__ import annotations

import time
import types
import uuid
from typing import Any

import kombu

from rpcworker.amqp.broker import parse_transport_url
from tests.cluster.cluster import NODES, PORTS, Cluster
from tests.helpers import wait_for

QUORUM = {"x-queue-type": "quorum"}


def _queue(name: str) -> kombu.Queue:
    return kombu.Queue(name, exchange="", routing_key=name, durable=True, queue_arguments=QUORUM)


def _get(url: str, name: str) -> Any:
    """The payload of the next message of ``name`` (acked), read through ``url``; None
    when the queue is empty."""
    with kombu.Connection(url, connect_timeout=5) as conn:
        message = _queue(name)(conn.default_channel).get(no_ack=False)
        if message is None:
            return None
        message.ack()
        return message.payload


def _info(cluster: Cluster, name: str) -> dict[str, Any]:
    info = cluster.queue_info(name)
    assert info is not None, f"queue {name} is gone"
    return info


def test_three_nodes_one_cluster(cluster: Cluster) -> None:
    for i in range(3):  # each node sees all three, not just itself
        assert cluster._status(i) == set(NODES)
        assert cluster.nodes[i].alive
    assert cluster.running_nodes() == set(NODES)
    defaults = types.SimpleNamespace(hostname="unused", port=1, userid="nobody", password="x")
    hosts, _, ssl = parse_transport_url(cluster.transport_url((2, 0, 1)), defaults)
    assert [(h.hostname, h.port, h.userid, h.password, h.virtual_host) for h in hosts] == [
        ("127.0.0.1", PORTS[i], "guest", "guest", "/") for i in (2, 0, 1)
    ]
    assert not ssl


def test_quorum_queue_survives_losing_its_leader(cluster: Cluster) -> None:
    name = f"bed-{uuid.uuid4().hex[:10]}"
    try:
        with kombu.Connection(cluster.url(0), connect_timeout=5) as conn:
            _queue(name)(conn.default_channel).declare()
        info = _info(cluster, name)
        assert info["type"] == "quorum" and info["leader"] in NODES
        assert sorted(info["members"]) == sorted(info["online"]) == sorted(NODES)

        with kombu.Connection(
            cluster.url(1), connect_timeout=5, transport_options={"confirm_publish": True}
        ) as conn:
            producer = conn.Producer()
            for body in ("one", "two"):  # returns once the broker confirmed it
                producer.publish(
                    body,
                    exchange="",
                    routing_key=name,
                    retry=False,
                    delivery_mode=2,
                    serializer="json",
                )
        assert _get(cluster.url(2), name) == "one"
        wait_for(
            lambda: _info(cluster, name)["messages"] == 1,
            30,
            interval=0.5,
            message="one message left",
        )

        leader = NODES.index(info["leader"])
        survivors = [i for i in range(3) if i != leader]
        cluster.stop_node(leader)
        t0 = time.monotonic()

        def new_leader() -> dict[str, Any] | None:
            now = _info(cluster, name)
            return now if now["leader"] not in (None, NODES[leader]) else None

        after = wait_for(new_leader, 30, interval=0.2, message="a new leader")
        assert after is not None
        info = after
        print(f"new leader {info['leader']} {time.monotonic() - t0:.1f} s after the stop")
        assert info["leader"] in {NODES[i] for i in survivors}
        assert sorted(info["online"]) == sorted(NODES[i] for i in survivors)
        assert cluster.running_nodes() == {NODES[i] for i in survivors}
        assert _get(cluster.url(survivors[-1]), name) == "two"
        assert _get(cluster.url(survivors[0]), name) is None

        t0 = time.monotonic()
        cluster.start_node(leader)
        print(f"{NODES[leader]} rejoined in {time.monotonic() - t0:.1f} s")
        assert cluster.running_nodes() == set(NODES)
        wait_for(
            lambda: sorted(_info(cluster, name)["online"]) == sorted(NODES),
            60,
            interval=0.5,
            message="all three members online again",
        )
    finally:
        cluster.delete_queue(name)
    assert cluster.queue_info(name) is None


def test_killed_node_rejoins(cluster: Cluster) -> None:
    pid = cluster.nodes[2]._pid()
    cluster.kill_node(2)
    assert not cluster.nodes[2].alive
    assert pid is not None
    # its peers notice at once: the killed process's distribution connections are closed
    wait_for(
        lambda: cluster.running_nodes() == set(NODES[:2]),
        30,
        interval=0.2,
        message="the peers to see the crash",
    )
    t0 = time.monotonic()
    cluster.start_node(2)
    print(f"{NODES[2]} restarted after a crash in {time.monotonic() - t0:.1f} s")
    assert cluster.nodes[2]._pid() != pid
    assert cluster.running_nodes() == set(NODES)
