"""Fixtures of the cluster tests: a 3-node RabbitMQ cluster (tests/cluster/cluster.py) for
the whole session, beside the default node, which must come out of it untouched.

If the cluster cannot start these tests fail under CI (CI=true) and skip elsewhere, with
one loud line on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import NODES, Cluster

# the functional tests' daemon fixtures, for tests here (pytest_plugins is root-only)
from tests.functional.conftest import broker_up, daemon_factory, uid
from tests.helpers import wait_for
from tests.rabbitnode import NodeError

__all__ = ["cluster", "cluster_healthy", "daemon_factory", "uid"]

DEFAULT_NODE = "rabbit@localhost"


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _default_node() -> tuple[object, str]:
    """(OS pid, users) of the default node, which the cluster must not touch."""

    def ctl(*args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-n", DEFAULT_NODE, *args], capture_output=True, text=True, timeout=60
        ).stdout

    try:
        pid = json.loads(ctl("status", "--formatter", "json")).get("pid")
    except ValueError:
        pid = None
    return pid, ctl("list_users", "-q")


def _start_cluster() -> Cluster:
    cluster = Cluster()
    try:
        return cluster.start()
    except (NodeError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        summary = str(exc).splitlines()[0]
        if _ci():
            pytest.fail(
                f"the test cluster ({', '.join(NODES)}) did not start: {exc}", pytrace=False
            )
        print(
            f"\n*** SKIPPING cluster tests: the test cluster did not start: {summary} "
            "(CI=true makes this a failure) ***",
            file=sys.stderr,
        )
        pytest.skip(f"test cluster did not start: {summary}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running cluster; stopped and its directory removed after the session, and the
    default node checked: still up, same OS process, same users."""
    before = _default_node()
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.base.exists()
    assert broker_up(), f"the default broker ({DEFAULT_NODE}) must still be running"
    pid, users = _default_node()
    assert pid == before[0], f"the default node restarted (pid {before[0]} -> {pid})"
    assert users == before[1], "the default node's users changed"


@pytest.fixture(autouse=True)
def cluster_healthy(cluster: Cluster) -> None:
    """All three nodes run before each test: start any node an earlier test stopped."""
    try:
        for i, node in enumerate(cluster.nodes):
            if not node.alive:
                cluster.start_node(i)
        wait_for(
            lambda: cluster.running_nodes() == set(NODES),
            60,
            interval=0.5,
            message="all three nodes to run",
        )
    except (NodeError, AssertionError) as exc:
        pytest.fail(f"the cluster is not whole: {exc}", pytrace=False)
