"""The daemon survives the broker going away: restart, forced close, dropped TCP,
failover to a second host, and a broker that is down when the daemon starts.

Each test restarts RabbitMQ at most once, and always brings it back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import BROKER_HOST, BROKER_PORT, broker_section, consumer_count
from tests.functional.support import (
    broker_stopped,
    cast,
    delete_entities,
    plain_rpc,
    rabbitmqctl,
    tags,
)
from tests.functional.tcpproxy import TCPProxy
from tests.helpers import wait_for

om = pytest.importorskip("oslo_messaging")
from oslo_config import cfg  # noqa: E402

LOST = "Connection to the broker lost"
CANNOT = "Cannot connect to the broker"


@contextlib.contextmanager
def oslo_client(topic: str) -> Iterator[Any]:
    om.set_transport_defaults(control_exchange="openstack")
    if not cfg.CONF._args:  # the GLOBAL CONF can be initialised once per process
        cfg.CONF([], project="rpcworker-interop")
    transport = om.get_rpc_transport(
        cfg.CONF, url=f"rabbit://guest:guest@{BROKER_HOST}:{BROKER_PORT}/"
    )
    try:
        yield om.get_rpc_client(transport, om.Target(topic=topic, version="1.0"), timeout=20)
    finally:
        transport.cleanup()


def connection_pids(name: str) -> list[str]:
    """Erlang pids of the broker connections whose client connection_name is ``name``."""
    out = rabbitmqctl(
        "list_connections", "pid", "client_properties", "-q", "--no-table-headers", timeout=60
    )
    assert out.returncode == 0, out.stderr
    wanted = f'{{"connection_name","{name}"}}'
    # one line per connection: "<rabbit@node.1.2.0>\t[{"product","py-amqp"},...]"
    return [line.split("\t", 1)[0].strip() for line in out.stdout.splitlines() if wanted in line]


class Setup:
    """A durable direct binding ``dur`` (recorder) and a per-test name space."""

    def __init__(self, uid: str, tmp_path: Path) -> None:
        self.uid = uid
        self.host = f"h-{uid}"
        self.records = tmp_path / f"records-{uid}.jsonl"
        self.exchange = f"ex-{uid}"
        self.queue = f"q-{uid}"
        self.key = f"k-{uid}"

    def config(
        self, broker: str | None = None, extra: str = "", more_bindings: str = "", more: str = ""
    ) -> str:
        bindings = "dur" + (f", {more_bindings}" if more_bindings else "")
        return f"""\
[DEFAULT]
bindings = {bindings}
host = {self.host}
graceful_shutdown_timeout = 10
{extra}
{broker if broker is not None else broker_section()}
[recorder]
path = {self.records}

[binding:dur]
type = direct
handler = recorder
exchange = {self.exchange}
queue = {self.queue}
routing_key = {self.key}
durable = true
{more}
"""

    def served(self, tag: str, timeout: float = 30) -> None:
        """A cast on ``dur`` is handled."""
        cast(self.exchange, self.key, "record", tag=tag)
        wait_for(lambda: tag in tags(self.records), timeout, message=f"the cast {tag!r}")


@pytest.fixture
def setup(uid: str, tmp_path: Path) -> Iterator[Setup]:
    s = Setup(uid, tmp_path)
    yield s
    delete_entities(
        (s.queue, f"vol-{uid}", f"t-{uid}", f"t-{uid}.{s.host}"), (s.exchange, f"volex-{uid}")
    )


def proxy_broker_section(port: int) -> str:
    return broker_section().replace(f"port = {BROKER_PORT}", f"port = {port}")


def test_broker_restart(daemon_factory: Any, setup: Setup) -> None:
    uid = setup.uid
    topic, vol = f"t-{uid}", f"vol-{uid}"
    more = f"""
[binding:vol]
type = direct
handler = recorder
exchange = volex-{uid}
queue = {vol}
routing_key = {vol}
durable = false

[binding:rpc]
type = rpc
handler = recorder
topic = {topic}
"""
    d = daemon_factory(setup.config(more_bindings="vol, rpc", more=more))
    queues = (setup.queue, vol, topic, f"{topic}.{setup.host}")
    d.wait_consuming(*queues)
    setup.served("before")

    with broker_stopped():
        d.wait_log(LOST, timeout=30)
        wait_for(
            lambda: d.log().count(CANNOT) >= 2,
            30,
            message=f"reconnect attempts in the log (tail: {d.log_tail()})",
        )
        assert d.alive()
    assert d.alive()

    # reconnected: the non-durable queues and exchange were re-declared
    d.wait_consuming(*queues, timeout=60)
    assert d.log().count("Consuming:") >= 2
    setup.served("after-durable")
    cast(f"volex-{uid}", vol, "record", tag="after-transient")
    wait_for(
        lambda: "after-transient" in tags(setup.records),
        30,
        message="the cast on the re-declared non-durable binding",
    )
    with oslo_client(topic) as client:
        assert client.call({"user": "t"}, "record", tag="oslo-after") == {"tag": "oslo-after"}
    with plain_rpc() as rpc:
        assert rpc.call(setup.exchange, setup.key, "record", tag="plain-after") == {
            "result": {"tag": "plain-after"}
        }
    assert "before" in tags(setup.records)
    assert d.alive()
    d.stop(timeout=30)
    assert d.proc.returncode == 0


def test_forced_close_of_the_connection(daemon_factory: Any, setup: Setup) -> None:
    d = daemon_factory(setup.config())
    d.wait_consuming(setup.queue)
    name = f"rpcworker:{setup.host}"
    pids = wait_for(lambda: connection_pids(name), 15, message=f"connection {name}")
    assert len(pids) == 1
    result = rabbitmqctl("close_connection", pids[0], "closed by the functional test")
    assert result.returncode == 0, result.stderr

    d.wait_log(LOST, timeout=30)
    wait_for(
        lambda: d.log().count("Consuming:") >= 2,
        30,
        message=f"a second session (tail: {d.log_tail()})",
    )
    new = wait_for(lambda: connection_pids(name), 15, message=f"a new connection {name}")
    assert new != pids
    d.wait_consuming(setup.queue)
    setup.served("after-close")
    assert d.alive()


def test_dropped_tcp_link(daemon_factory: Any, setup: Setup) -> None:
    with TCPProxy(BROKER_HOST, BROKER_PORT).start() as proxy:
        d = daemon_factory(setup.config(broker=proxy_broker_section(proxy.port)))
        d.wait_consuming(setup.queue)
        setup.served("before-drop")
        assert proxy.accepted == 1

        assert proxy.kill_all() == 1
        d.wait_log(LOST, timeout=30)
        wait_for(
            lambda: proxy.accepted >= 2 and d.log().count("Consuming:") >= 2,
            30,
            message=f"a reconnection through the proxy (tail: {d.log_tail()})",
        )
        d.wait_consuming(setup.queue)
        setup.served("after-drop")
        with plain_rpc() as rpc:
            assert rpc.call(setup.exchange, setup.key, "record", tag="call-after-drop") == {
                "result": {"tag": "call-after-drop"}
            }
        assert d.alive()
        d.stop(timeout=30)
        assert d.proc.returncode == 0


def test_failover_to_second_host(daemon_factory: Any, setup: Setup) -> None:
    url = f"rabbit://guest:guest@127.0.0.1:1,guest:guest@{BROKER_HOST}:{BROKER_PORT}/"
    d = daemon_factory(setup.config(extra=f"transport_url = {url}"))
    d.wait_consuming(setup.queue)
    setup.served("failover")
    with plain_rpc() as rpc:
        assert rpc.call(setup.exchange, setup.key, "record", tag="failover-call") == {
            "result": {"tag": "failover-call"}
        }
    assert "guest:guest@" not in d.log()


def test_broker_down_at_start(daemon_factory: Any, setup: Setup) -> None:
    with TCPProxy(BROKER_HOST, BROKER_PORT) as proxy:  # bound, not yet listening
        d = daemon_factory(setup.config(broker=proxy_broker_section(proxy.port)))
        wait_for(
            lambda: d.log().count(CANNOT) >= 3,
            30,
            message=f"failed attempts logged (tail: {d.log_tail()})",
        )
        assert d.alive()
        assert proxy.accepted == 0
        assert consumer_count(setup.queue) == 0

        proxy.start()
        d.wait_consuming(setup.queue, timeout=30)
        setup.served("late-broker")
        assert d.alive()
        d.stop(timeout=30)
        assert d.proc.returncode == 0
