"""A throw-away 3-node RabbitMQ cluster beside the default node, for tests/cluster.

``Cluster().start()`` boots ``rabbit-c1/c2/c3@localhost`` (AMQP on 127.0.0.1:5701-5703,
distribution on 25701-25703; no plugins) as tests/rabbitnode.py RabbitNodes, one sub
directory each of a temporary directory the Cluster owns; c2 and c3 then join c1
(``stop_app``, ``reset``, ``join_cluster rabbit-c1@localhost``, ``start_app``: deterministic,
unlike classic-config peer discovery of nodes that boot at the same time).
``cluster_partition_handling = pause_minority``: losing one node leaves a serving majority.
The default node (``rabbit@localhost`` on 5672) is never touched.

For humans: ``python -m tests.cluster.cluster start|status|stop`` keeps a cluster running
in /tmp/rpcworker-cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.helpers import wait_for
from tests.rabbitnode import NodeError, RabbitNode, _port_in_use

NODES = ("rabbit-c1@localhost", "rabbit-c2@localhost", "rabbit-c3@localhost")
PORTS = (5701, 5702, 5703)  # AMQP, 127.0.0.1 only
DIST_PORTS = (25701, 25702, 25703)
CLI_DIR = Path("/tmp/rpcworker-cluster")
# list_queues columns (all exist in 3.10.8; leader/members/online are empty for classic queues)
QUEUE_COLUMNS = ("name", "type", "leader", "members", "online", "messages", "consumers")


def _config(port: int) -> list[str]:
    return [
        f"listeners.tcp.default = 127.0.0.1:{port}",
        "loopback_users = none",
        "log.file.level = info",
        "cluster_name = rpcworker-test-cluster",
        "cluster_partition_handling = pause_minority",
    ]


class Cluster:
    """Three clustered nodes in ``base`` (a directory this object owns and removes)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="rpcworker-cluster-"))
        self.nodes = [
            RabbitNode(name, port, dist, self.base / name.partition("@")[0], _config(port))
            for name, port, dist in zip(NODES, PORTS, DIST_PORTS, strict=True)
        ]

    # -- the whole cluster ------------------------------------------------------------

    def start(self, timeout: float = 180) -> Cluster:
        """Boot the three nodes (in parallel) from blank directories, cluster them and wait
        until each lists all three as running. On any failure: stop everything, remove the
        directory and raise NodeError with the nodes' log tails."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:  # before touching anything: a leftover cluster?
                node.check_ports()
            self.base.mkdir(parents=True, exist_ok=True)
            self.base.chmod(0o755)  # the nodes run as rabbitmq
            for node in self.nodes:
                shutil.rmtree(node.base, ignore_errors=True)
            self._each(lambda n: n.launch())
            self._each(lambda n: n.await_boot(deadline))
            for i in (1, 2):
                for args in (["stop_app"], ["reset"], ["join_cluster", NODES[0]], ["start_app"]):
                    self._must(i, *args, timeout=max(10, deadline - time.monotonic()))
            try:
                wait_for(
                    lambda: all(self._status(i) == set(NODES) for i in range(3)),
                    max(1, deadline - time.monotonic()),
                    interval=0.5,
                    message="every node to list all three as running",
                )
            except AssertionError as exc:
                raise NodeError(f"{exc}\n{self.diagnostics()}") from None
        except Exception as exc:
            self.stop()
            if isinstance(exc, NodeError):
                raise
            raise NodeError(f"the cluster did not start: {exc!r}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop all nodes (in parallel) and remove the directory. Never raises."""
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(RabbitNode.stop, self.nodes))
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _each(self, action: Callable[[RabbitNode], object]) -> None:
        """``action`` on every node in parallel; the first failure is raised after all."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            futures = [pool.submit(action, node) for node in self.nodes]
        for future in futures:
            future.result()

    def diagnostics(self) -> str:
        return "\n".join(node.diagnostics() for node in self.nodes)

    # -- addresses --------------------------------------------------------------------

    def url(self, i: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{PORTS[i]}//"

    def transport_url(self, order: Sequence[int] = (0, 1, 2)) -> str:
        """oslo.messaging's multi-host form, hosts in ``order``."""
        return "rabbit://" + ",".join(f"guest:guest@127.0.0.1:{PORTS[i]}" for i in order) + "/"

    # -- one node ---------------------------------------------------------------------

    def ctl(self, i: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODES[i] ARGS``."""
        return self.nodes[i].ctl(*args, timeout=timeout)

    def _must(self, i: int, *args: str, timeout: float = 60) -> str:
        result = self.ctl(i, *args, timeout=timeout)
        if result.returncode != 0:
            raise NodeError(
                f"`rabbitmqctl -n {NODES[i]} {' '.join(args)}` exited "
                f"{result.returncode}: {(result.stderr or result.stdout).strip()}"
                f"\n{self.diagnostics()}"
            )
        return result.stdout

    def stop_node(self, i: int) -> None:
        """Graceful stop of node i; returns once its process has exited and its AMQP port
        is closed."""
        node = self.nodes[i]
        node.started = True  # also a node this object did not (re)start itself
        node.stop()
        if node.alive or _port_in_use(node.amqp_port):
            raise NodeError(f"{node.name} is still running after a stop\n{node.diagnostics()}")

    def kill_node(self, i: int) -> None:
        """SIGKILL node i's OS process (a crash); returns once it is gone."""
        self.nodes[i].kill()

    def start_node(self, i: int, timeout: float = 120) -> None:
        """Boot node i again on its own directory: it rejoins the cluster (its mnesia
        remembers it). Returns once it has booted and another running node lists it."""
        deadline = time.monotonic() + timeout
        self.nodes[i].start(timeout)

        def listed() -> bool:
            return any(
                NODES[i] in (self._status(j) or ())
                for j in range(3)
                if j != i and self.nodes[j].alive
            )

        try:
            wait_for(
                listed,
                max(1, deadline - time.monotonic()),
                interval=0.5,
                message=f"another node to list {NODES[i]} as running",
            )
        except AssertionError as exc:
            raise NodeError(f"{exc}\n{self.diagnostics()}") from None

    # -- what the cluster says --------------------------------------------------------

    def _status(self, i: int) -> set[str] | None:
        """The running nodes node i reports; None when it does not answer."""
        result = self.ctl(i, "cluster_status", "--formatter", "json", timeout=30)
        try:
            return set(json.loads(result.stdout)["running_nodes"])
        except (ValueError, KeyError, TypeError):
            return None

    def _answering(self, query: Callable[[int], Any]) -> Any:
        """``query(i)`` of the first live node whose answer is not None (else None)."""
        for i, node in enumerate(self.nodes):
            if node.alive and (answer := query(i)) is not None:
                return answer
        return None

    def running_nodes(self) -> set[str]:
        """The running nodes as the first node that answers sees them (empty: none)."""
        return self._answering(self._status) or set()

    def _queues(self, i: int) -> list[dict[str, Any]] | None:
        result = self.ctl(i, "list_queues", "-q", "--formatter", "json", *QUEUE_COLUMNS)
        try:
            rows = json.loads(result.stdout) if result.returncode == 0 else None
        except ValueError:
            return None
        return rows if isinstance(rows, list) else None

    def queue_info(self, queue: str) -> dict[str, Any] | None:
        """{"type", "leader" (None for classic queues), "members", "online", "messages",
        "consumers"} of ``queue`` from a running node; None when it does not exist."""
        for row in self._answering(self._queues) or []:
            if row.get("name") == queue:
                return {
                    "type": row.get("type"),
                    "leader": row.get("leader") or None,
                    "members": list(row.get("members") or []),
                    "online": list(row.get("online") or []),
                    "messages": int(row.get("messages") or 0),
                    "consumers": int(row.get("consumers") or 0),
                }
        return None

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` through a running node; an absent queue is fine."""

        def delete(i: int) -> bool | None:
            result = self.ctl(i, "delete_queue", queue)
            ok = result.returncode == 0 or "not found" in result.stderr.lower()
            return True if ok else None

        if self._answering(delete) is None:
            raise NodeError(f"no node deleted queue {queue!r}\n{self.diagnostics()}")


# -- python -m tests.cluster.cluster start|status|stop --------------------------------


def main(argv: Sequence[str]) -> int:
    command = argv[0] if len(argv) == 1 else ""
    if command == "start":
        if CLI_DIR.exists() and not any(_port_in_use(p) for p in (*PORTS, *DIST_PORTS)):
            shutil.rmtree(CLI_DIR)  # left over from a crash: nothing runs there
        try:
            cluster = Cluster(CLI_DIR).start()
        except NodeError as exc:
            print(f"cluster did not start: {exc}", file=sys.stderr)
            return 1
        print(
            "\n".join(
                [
                    *map(cluster.url, range(3)),
                    cluster.transport_url(),
                    f"stop it with: {sys.executable} -m tests.cluster.cluster stop",
                ]
            )
        )
    elif command == "status":
        print(f"running nodes: {sorted(Cluster(CLI_DIR).running_nodes()) or 'none'}")
    elif command == "stop":
        cluster = Cluster(CLI_DIR)
        for node in cluster.nodes:
            node.started = node.base.exists() or _port_in_use(node.amqp_port)
        cluster.stop()
        print(f"stopped; removed {CLI_DIR}")
    else:
        print("usage: python -m tests.cluster.cluster start|status|stop", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
