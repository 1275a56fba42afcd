"""The real daemon on a real 3-node RabbitMQ cluster (tests/cluster/cluster.py).

Quorum queues (``queue_type = quorum``) for a direct binding and an rpc binding,
``transport_url`` listing the three nodes, and real faults: the node a worker is
connected to (which also leads its quorum queues) is stopped or killed while a
stream of confirmed casts and a caller's oslo.messaging calls run; three workers
share one topic; a restarted node rejoins and serves.

Every fault test prints one ``FAULT cluster-...`` line with the failover time and
the loss/duplicate counts (also appended to $RPCWORKER_FAULT_REPORT when set).
"""

from __future__ import annotations

import collections
import datetime
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oslo_config import cfg
from rpcworker_testplugin import read_records

from tests.cluster.cluster import NODES, PORTS, Cluster
from tests.functional.conftest import stop_all
from tests.functional.faults_report import handled_ids, report, tally
from tests.functional.stream import Stream
from tests.functional.tcpproxy import TCPProxy
from tests.helpers import wait_for

om = pytest.importorskip("oslo_messaging")

CTXT = {"request_id": "req-cluster"}
CONNECTED = "Connected to the broker at"
LOST = "Connection to the broker lost"
#: casts per fault stream, their rate (messages/s) and the recorder's per-message delay
COUNT = 1500
RATE = 300.0
DELAY = 0.01


class Rig:
    """Workers on the cluster (recorder handler, quorum queues), callers, and cleanup."""

    def __init__(self, cluster: Cluster, factory: Any, tmp: Path, uid: str) -> None:
        self.cluster, self.factory, self.tmp, self.uid = cluster, factory, tmp, uid
        self.exchange, self.queue, self.key = f"cl-ex-{uid}", f"cl-q-{uid}", f"cl-k-{uid}"
        self.topic = f"cl-t-{uid}"
        self.daemons: list[Any] = []
        self.transports: list[Any] = []

    def config(
        self, name: str, transport_url: str, heartbeat: int = 10, strategy: str = "round-robin"
    ) -> str:
        return f"""\
[DEFAULT]
bindings = work, rpc
host = {name}
transport_url = {transport_url}
graceful_shutdown_timeout = 10

[broker]
heartbeat = {heartbeat}
connect_timeout = 3
failover_strategy = {strategy}
reconnect_interval_start = 0.2
reconnect_interval_step = 0.5
reconnect_interval_max = 2

[recorder]
path = {self.tmp / f"records-{name}.jsonl"}
delay = {DELAY}

[binding:work]
type = direct
handler = recorder
exchange = {self.exchange}
queue = {self.queue}
routing_key = {self.key}
queue_type = quorum

[binding:rpc]
type = rpc
handler = recorder
topic = {self.topic}
queue_type = quorum
"""

    def start(
        self,
        name: str,
        order: tuple[int, ...],
        proxy: TCPProxy | None = None,
        heartbeat: int = 10,
        strategy: str = "round-robin",
    ) -> Any:
        """A worker whose transport_url lists the nodes in ``order`` (the first one
        through ``proxy`` when given); waits until it consumes, and (round-robin) checks
        it is connected to the first one."""
        url = self.cluster.transport_url(order)
        first = PORTS[order[0]]
        if proxy is not None:
            url = url.replace(f":{first},", f":{proxy.port},", 1)
            first = proxy.port
        d = self.factory(self.config(name, url, heartbeat, strategy), name=name)
        d.records_path = str(self.tmp / f"records-{name}.jsonl")
        d.name = name
        self.daemons.append(d)
        wait_for(
            lambda: "Consuming:" in d.log() or not d.alive(), 60, message=f"worker {name} consuming"
        )
        assert d.alive(), d.log_tail()
        if strategy == "round-robin":
            assert f":{first}/" in connected_lines(d)[0], d.log_tail()
        return d

    def transport(self, node: int) -> Any:
        """An oslo.messaging RPC transport on ``node`` only."""
        if not cfg.CONF._args:  # oslo.messaging 18 needs the global CONF parsed
            cfg.CONF([], project="rpcworker-cluster")
        om.set_transport_defaults(control_exchange="openstack")
        t = om.get_rpc_transport(cfg.CONF, url=f"rabbit://guest:guest@127.0.0.1:{PORTS[node]}/")
        self.transports.append(t)
        # as the servers on the topic: quorum queues, hence a durable control exchange
        # (read when the transport first connects; cleared again in cleanup())
        cfg.CONF.set_override("rabbit_quorum_queue", True, group="oslo_messaging_rabbit")
        return t

    def client(self, transport: Any, timeout: float = 5) -> Any:
        return om.get_rpc_client(transport, om.Target(topic=self.topic), timeout=timeout)

    def cleanup(self) -> None:
        stop_all(self.daemons)
        for t in self.transports:
            try:
                t.cleanup()
            except Exception:
                pass
        if self.transports:
            cfg.CONF.clear_override("rabbit_quorum_queue", group="oslo_messaging_rabbit")
        for q in (self.queue, self.topic, *(f"{self.topic}.{d.name}" for d in self.daemons)):
            self.cluster.delete_queue(q)


@pytest.fixture
def rig(cluster: Cluster, daemon_factory: Any, tmp_path: Path, uid: str) -> Iterator[Rig]:
    r = Rig(cluster, daemon_factory, tmp_path, uid)
    yield r
    r.cleanup()


def connected_lines(d: Any) -> list[str]:
    return [line for line in d.log().splitlines() if CONNECTED in line]


class Caller(threading.Thread):
    """Calls ``slow(seconds=0, n=i)`` in a loop until halted; each reply must be {"n": i}.

    A call may time out (the worker is failing over), never get another call's reply.
    """

    def __init__(self, client: Any) -> None:
        super().__init__(name="cluster-caller", daemon=True)
        self.client = client
        self.ok: list[float] = []  #: monotonic times of correct replies
        self.timeouts = 0
        self.wrong: list[tuple[int, Any]] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            try:
                got = self.client.call(CTXT, "slow", seconds=0, n=n)
            except om.MessagingTimeout:
                self.timeouts += 1
                continue
            except Exception as exc:  # noqa: BLE001 - counted, shown in the failure
                self.errors[type(exc).__name__] += 1
                self._halt.wait(0.2)
                continue
            if got == {"n": n}:
                self.ok.append(time.monotonic())
            else:
                self.wrong.append((n, got))

    def halt(self) -> None:
        self._halt.set()
        self.join(30)

    def served_since(self, t: float) -> int:
        return sum(1 for x in self.ok if x > t)


def _log_time(line: str) -> float:
    """The time stamp of an oslo.log line (``2026-11-27 03:04:05.678 ...``)."""
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _outage(d: Any) -> float:
    """Seconds from the worker's last 'Connection to the broker lost' line to the
    'Connected' line after it, by the worker's own log."""
    lines = d.log().splitlines()
    lost = max(i for i, line in enumerate(lines) if LOST in line)
    back = next(line for line in lines[lost:] if CONNECTED in line)
    return _log_time(back) - _log_time(lines[lost])


def _watch_reconnect(d: Any, before: int, timeout: float = 60) -> float:
    """Monotonic time at which ``d`` logged one more 'Connected' line than ``before``."""
    wait_for(
        lambda: len(connected_lines(d)) > before,
        timeout,
        interval=0.02,
        message=f"worker {d.name} to reconnect (log: {d.log_tail()})",
    )
    return time.monotonic()


@pytest.mark.parametrize("fault", ["stop", "kill", "blackhole"])
def test_worker_fails_over_when_its_node_goes(rig: Rig, fault: str) -> None:
    """The worker is on node 1, which also leads both quorum queues; a publisher on node
    3 streams confirmed casts and a caller on node 3 makes calls. Node 1 is stopped
    (graceful), killed (SIGKILL), or the worker's link to it silently black-holed (a
    proxy that forwards nothing and holds new connections; heartbeat 2 s): the worker
    reconnects to node 2 (its first attempt: the next host of transport_url),
    re-declares and consumes again; every cast is handled at least once, every reply
    is the right one."""
    cluster = rig.cluster
    proxy = TCPProxy("127.0.0.1", PORTS[0]).start() if fault == "blackhole" else None
    try:
        w = rig.start("w1", (0, 1, 2), proxy=proxy, heartbeat=2 if proxy else 10)
        _failover(rig, w, fault, proxy)
    finally:
        if proxy is not None:
            proxy.close()
    if proxy is None:
        cluster.start_node(0)
        assert cluster.running_nodes() == set(NODES)
        wait_for(
            lambda: len((cluster.queue_info(rig.queue) or {}).get("online", [])) == 3,
            60,
            message="the restarted node back among the quorum queue's members",
        )


def _failover(rig: Rig, w: Any, fault: str, proxy: TCPProxy | None) -> None:
    cluster = rig.cluster
    for q in (rig.queue, rig.topic):
        info = cluster.queue_info(q)
        assert info and info["type"] == "quorum" and len(info["members"]) == 3, info
        assert info["leader"] == NODES[0], f"{q}: leader {info['leader']} (client-local)"

    caller = Caller(rig.client(rig.transport(2)))
    caller.start()
    stream = Stream(rig.exchange, rig.key, count=COUNT, rate=RATE, host="127.0.0.1", port=PORTS[2])
    stream.start()
    try:
        wait_for(
            lambda: len(handled_ids(w.records_path)[0]) >= COUNT // 3 and len(caller.ok) >= 3,
            60,
            message="a third of the stream handled",
        )
        assert stream.is_alive(), "the fault must land mid-stream"
        before = len(connected_lines(w))
        t0 = time.monotonic()
        if proxy is not None:
            assert proxy.blackhole() == 1  # the worker's connection: open, silent
            fault_thread = None
        else:
            fault_thread = threading.Thread(
                target=cluster.stop_node if fault == "stop" else cluster.kill_node, args=(0,)
            )
            fault_thread.start()
        reconnected = _watch_reconnect(w, before)
        assert f":{PORTS[1]}/" in connected_lines(w)[-1], w.log_tail()
        # served again: a call answered after the reconnect
        wait_for(
            lambda: caller.served_since(reconnected) >= 1,
            60,
            interval=0.02,
            message=f"a call answered after the failover (caller: {caller.errors})",
        )
        served = min(x for x in caller.ok if x > reconnected)
        if fault_thread is not None:
            fault_thread.join(120)
        wait_for(lambda: caller.served_since(reconnected) >= 5, 60, message="calls keep working")
        wait_for(lambda: not stream.is_alive(), 120, message="the stream finished")
        assert stream.error is None, repr(stream.error)
        wait_for(
            lambda: not tally("", stream.confirmed, w.records_path).missing,
            90,
            message="every confirmed cast handled",
        )
    finally:
        stream.halt()
        caller.halt()
    assert w.alive() and caller.wrong == [], caller.wrong
    # the per-process fanout queue was declared again on the new node
    rig.client(rig.transports[0]).prepare(fanout=True).cast(
        CTXT, "slow", seconds=0, n="fanout-after-failover"
    )
    wait_for(
        lambda: any(
            r["args"].get("n") == "fanout-after-failover"
            for r in read_records(w.records_path)
            if r.get("method") == "slow"
        ),
        30,
        message="a fanout cast reaching the worker after the failover",
    )
    if proxy is not None:  # the first attempt after the loss went to the next node
        assert proxy.held_accepted == 0, "a reconnect attempt went to the lost host first"
    for q in (rig.queue, rig.topic):
        wait_for(
            lambda q=q: (cluster.queue_info(q) or {}).get("messages") == 0,
            30,
            message=f"{q} drained",
        )
    t = tally(
        f"cluster-node-{fault}",
        stream.confirmed,
        w.records_path,
        detail=(
            f"worker reconnected {_outage(w):.2f} s after it lost its connection and "
            f"{reconnected - t0:.2f} s after the fault began, first call served "
            f"{served - t0:.2f} s after; calls: {len(caller.ok)} answered, {caller.timeouts} "
            f"timed out, 0 wrong; {stream.describe()}"
        ),
    )
    report(t)
    assert t.missing == [] and t.unexpected == []
    assert LOST in w.log()


def _share(records: dict[str, list[dict[str, Any]]], ids: set[int]) -> dict[str, int]:
    return {
        name: sum(1 for r in rs if r.get("method") == "record" and r["args"].get("id") in ids)
        for name, rs in records.items()
    }


def test_three_workers_share_one_topic(rig: Rig) -> None:
    """Three workers, one per node, on one quorum topic: casts spread over all three, a
    fanout cast reaches each once, a server-targeted call reaches only that server; the
    node leading the queue is stopped: its worker fails over, the other two keep their
    connections and consumers, and the topic keeps being served."""
    cluster = rig.cluster
    workers = [rig.start(f"w{i}", tuple((i + k) % 3 for k in range(3))) for i in range(3)]
    wait_for(
        lambda: (cluster.queue_info(rig.topic) or {}).get("consumers") == 3,
        30,
        message="three consumers on the topic queue",
    )
    leader = NODES.index((cluster.queue_info(rig.topic) or {})["leader"])
    client = rig.client(rig.transport((leader + 1) % 3), timeout=15)

    def records() -> dict[str, list[dict[str, Any]]]:
        return {d.name: read_records(d.records_path) for d in workers}

    def spread(ids: range, when: str) -> None:
        """Cast ``ids``; each is handled once, and each worker handles a fair part."""
        for i in ids:
            client.cast(CTXT, "record", id=i)
        wanted = set(ids)
        wait_for(
            lambda: sum(_share(records(), wanted).values()) >= len(wanted),
            60,
            message=f"{len(wanted)} casts handled {when}",
        )
        share = _share(records(), wanted)
        print(f"\nCLUSTER share of {len(wanted)} casts over 3 workers {when}: {share}")
        assert sum(share.values()) == len(wanted), share  # each once: nothing failed
        assert min(share.values()) >= len(wanted) // 6, f"unfair spread: {share}"

    spread(range(300), "with all nodes up")

    client.prepare(fanout=True).cast(CTXT, "record", id=10_000)
    wait_for(
        lambda: all(v == 1 for v in _share(records(), {10_000}).values()),
        30,
        message="the fanout cast on every worker",
    )
    for d in workers:
        assert client.prepare(server=d.name).call(CTXT, "slow", seconds=0, n=d.name) == {
            "n": d.name
        }
    got = {
        name: [r["args"]["n"] for r in rs if r.get("method") == "slow" and r["kind"] == "rpc"]
        for name, rs in records().items()
    }
    assert got == {d.name: [d.name] for d in workers}

    moved = workers[leader]
    others = [d for d in workers if d is not moved]
    before = len(connected_lines(moved))
    cluster.stop_node(leader)
    _watch_reconnect(moved, before)
    wait_for(
        lambda: (cluster.queue_info(rig.topic) or {}).get("consumers") == 3,
        60,
        message="three consumers again after the leader's node stopped",
    )
    spread(range(1000, 1300), f"after stopping {NODES[leader]}")
    for d in others:  # a leader change does not disturb consumers on other nodes
        assert LOST not in d.log() and len(connected_lines(d)) == 1, d.log_tail()
    cluster.start_node(leader)


def test_restarted_node_rejoins_and_serves(rig: Rig) -> None:
    """Node 2 stops; the cluster keeps serving (a worker and a caller on node 1). Node 2
    comes back and rejoins, its quorum replicas online again; casts queued while no
    worker runs are then served by a worker that knows only node 2."""
    cluster = rig.cluster
    w = rig.start("w1", (0,))
    cluster.stop_node(1)
    assert NODES[1] not in cluster.running_nodes()
    client = rig.client(rig.transport(0))
    assert client.call(CTXT, "slow", seconds=0, n="down") == {"n": "down"}
    cluster.start_node(1)
    assert cluster.running_nodes() == set(NODES)
    wait_for(
        lambda: len((cluster.queue_info(rig.topic) or {}).get("online", [])) == 3,
        60,
        message="the rejoined node among the topic queue's online members",
    )
    w.stop()
    for i in range(20):
        client.cast(CTXT, "record", id=i)  # queued with no consumer
    w2 = rig.start("w2", (1,))
    wait_for(
        lambda: len(handled_ids(w2.records_path)[0]) == 20,
        30,
        message="the worker on the rejoined node served the queued casts",
    )
    assert rig.client(rig.transport(1)).call(CTXT, "slow", seconds=0, n="back") == {"n": "back"}


def _node_of(line: str) -> int:
    return next(i for i, port in enumerate(PORTS) if f":{port}/" in line)


def test_shuffle_fails_over_to_another_node(rig: Rig) -> None:
    """failover_strategy = shuffle: the worker starts on some node; that node is killed;
    the worker's first attempt goes to one of the two others (never back to the dead
    one: no 'Cannot connect' line), and it serves calls there."""
    cluster = rig.cluster
    w = rig.start("w1", (0, 1, 2), strategy="shuffle")
    lost_node = _node_of(connected_lines(w)[0])
    client = rig.client(rig.transport((lost_node + 1) % 3))
    assert client.call(CTXT, "slow", seconds=0, n="before") == {"n": "before"}
    before = len(connected_lines(w))
    cluster.kill_node(lost_node)
    _watch_reconnect(w, before)
    assert _node_of(connected_lines(w)[-1]) != lost_node
    assert "Cannot connect to the broker" not in w.log(), w.log_tail()
    assert client.call(CTXT, "slow", seconds=0, n="after") == {"n": "after"}
    cluster.start_node(lost_node)
