"""The strict RabbitMQ 4.x node (tests/rabbit4node.py) for the tests in this directory.

``strict_broker`` (session) starts ``Rabbit4Node(5674, strict=True)`` from empty data:
``deprecated_features.permit.transient_nonexcl_queues``, ``global_qos`` and
``classic_queue_mirroring`` are false. It yields the node: ``.url``, ``.port``,
``.ctl(*args)`` (its own rabbitmqctl, run in the container), ``.version``.

When the node cannot run (no root and it cannot be built, not root, no systemd-nspawn,
a node that does not boot) these tests fail under CI (CI=true) and skip elsewhere, with
one line saying why and how to build the root. The host's broker (5672) is never touched.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.rabbit4node import STRICT_PORT, Rabbit4Error, Rabbit4Node, start_node


@pytest.fixture(scope="session")
def strict_broker() -> Iterator[Rabbit4Node]:
    try:
        node = start_node(STRICT_PORT, strict=True)
    except Rabbit4Error as exc:
        first = str(exc).splitlines()[0]
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the strict RabbitMQ 4.x node did not start: {exc}", pytrace=False)
        print(f"\n*** SKIPPING RabbitMQ 4.x strict tests: {first} ***", file=sys.stderr)
        pytest.skip(f"the strict RabbitMQ 4.x node did not start: {first}")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def uid() -> str:
    """A short unique suffix for the names of one test."""
    return uuid.uuid4().hex[:10]
