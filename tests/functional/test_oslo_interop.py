"""An unmodified oslo.messaging RPCClient against an rpc binding of the real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rpcworker_testplugin import read_records

from tests.functional.conftest import (
    BROKER_HOST,
    BROKER_PORT,
    broker_section,
    consumer_count,
    delete_queues,
    stop_all,
)
from tests.helpers import wait_for

om = pytest.importorskip("oslo_messaging")
from oslo_config import cfg  # noqa: E402

CTXT = {"request_id": "req-1", "user_id": "u1", "project_id": "p1"}


@pytest.fixture(scope="module")
def transport() -> Iterator[Any]:
    om.set_transport_defaults(control_exchange="openstack")
    if not cfg.CONF._args:  # the GLOBAL CONF, as oslo.messaging 18 requires (see reference)
        cfg.CONF([], project="rpcworker-interop")
    t = om.get_rpc_transport(cfg.CONF, url=f"rabbit://guest:guest@{BROKER_HOST}:{BROKER_PORT}/")
    yield t
    t.cleanup()


def rpc_config(topic: str, server: str, exchange: str = "openstack", extra: str = "") -> str:
    return f"""\
[DEFAULT]
bindings = {topic}
host = {server}
graceful_shutdown_timeout = 10
{extra}
{broker_section()}
[binding:{topic}]
type = rpc
handler = echo
exchange = {exchange}
topic = {topic}
"""


@pytest.fixture
def rpc_worker(daemon_factory: Any, uid: str) -> Iterator[Any]:
    topic, server = f"t-{uid}", f"s-{uid}"
    d = daemon_factory(rpc_config(topic, server))
    d.wait_consuming(topic, f"{topic}.{server}")
    d.topic, d.server = topic, server
    yield d
    try:
        d.stop(timeout=30)
    finally:
        delete_queues(topic, f"{topic}.{server}")


def client(transport: Any, topic: str, **kw: Any) -> Any:
    return om.get_rpc_client(transport, om.Target(topic=topic, version="1.0"), timeout=15, **kw)


def test_call_returns_result(transport: Any, rpc_worker: Any) -> None:
    assert client(transport, rpc_worker.topic).call(CTXT, "echo", x=1, y=[1, 2]) == {
        "x": 1,
        "y": [1, 2],
    }


def test_context_reaches_handler(transport: Any, rpc_worker: Any) -> None:
    got = client(transport, rpc_worker.topic).call(CTXT, "context")
    assert {k: got[k] for k in CTXT} == CTXT
    assert "client_timeout" in got


def test_server_targeted_call(transport: Any, rpc_worker: Any) -> None:
    c = client(transport, rpc_worker.topic).prepare(server=rpc_worker.server)
    assert c.call(CTXT, "echo", x=4) == {"x": 4}


# -- with the recorder handler: what the daemon really did ---------------------------


class RecorderWorkers:
    """rpc-binding daemons with the `recorder` handler; queues deleted after them."""

    def __init__(self, factory: Any, tmp_path: Path, uid: str) -> None:
        self.factory, self.tmp, self.uid = factory, tmp_path, uid
        self.topic = f"t-{uid}"
        self.daemons: list[Any] = []
        self.queues: set[str] = set()

    def start(
        self,
        name: str = "w1",
        handler: str = "recorder",
        exchange: str = "openstack",
        topic: str | None = None,
    ) -> Any:
        topic = topic or self.topic
        server = f"{name}-{self.uid}"
        rec = self.tmp / f"records-{name}.jsonl"
        config = rpc_config(topic, server, exchange).replace(
            "handler = echo", f"handler = {handler}"
        )
        d = self.factory(config + f"\n[recorder]\npath = {rec}\n", name=name)
        self.daemons.append(d)
        self.queues |= {topic, f"{topic}.{server}"}
        d.wait_consuming(topic, f"{topic}.{server}")
        d.wait_log("Consuming:")
        d.topic, d.server, d.records_path = topic, server, str(rec)
        return d

    def cleanup(self) -> None:
        stop_all(self.daemons)
        delete_queues(*sorted(self.queues))


@pytest.fixture
def workers(daemon_factory: Any, tmp_path: Path, uid: str) -> Iterator[RecorderWorkers]:
    w = RecorderWorkers(daemon_factory, tmp_path, uid)
    yield w
    w.cleanup()


def records(d: Any, **match: Any) -> list[dict[str, Any]]:
    return [r for r in read_records(d.records_path) if all(r.get(k) == v for k, v in match.items())]


def test_cast_is_handled_with_context(transport: Any, workers: RecorderWorkers) -> None:
    d = workers.start()
    client(transport, d.topic).cast(CTXT, "record", x=1, tag="cast")
    (rec,) = wait_for(lambda: records(d, method="record"), 10, message="the cast recorded")
    assert rec["args"] == {"x": 1, "tag": "cast"}
    assert {k: rec["ctxt"][k] for k in CTXT} == CTXT
    assert rec["ctxt"]["client_timeout"] is None  # a cast has no caller waiting


def test_fanout_cast_reaches_every_server(transport: Any, workers: RecorderWorkers) -> None:
    d1, d2 = workers.start("w1"), workers.start("w2")
    client(transport, workers.topic).prepare(fanout=True).cast(CTXT, "record", tag="fan")
    for d in (d1, d2):
        (rec,) = wait_for(
            lambda d=d: records(d, method="record"),
            10,
            message=f"the fanout cast recorded by {d.server}",
        )
        assert rec["args"] == {"tag": "fan"}
    # a plain cast goes to one of them only
    client(transport, workers.topic).cast(CTXT, "record", tag="one")
    wait_for(
        lambda: len(records(d1, method="record")) + len(records(d2, method="record")) == 3,
        10,
        message="the plain cast recorded",
    )
    tags = [r["args"]["tag"] for d in (d1, d2) for r in records(d, method="record")]
    assert sorted(tags) == ["fan", "fan", "one"]


def test_server_targeted_call_reaches_only_that_server(
    transport: Any, workers: RecorderWorkers
) -> None:
    d1, d2 = workers.start("w1"), workers.start("w2")
    c = client(transport, workers.topic)
    for i in range(5):
        assert c.prepare(server=d2.server).call(CTXT, "record", i=i) == {"i": i}
    assert c.prepare(server=d1.server).call(CTXT, "record", i=99) == {"i": 99}
    assert [r["args"]["i"] for r in records(d2, method="record")] == [0, 1, 2, 3, 4]
    assert [r["args"]["i"] for r in records(d1, method="record")] == [99]


def test_remote_builtin_exception_is_rebuilt(transport: Any, workers: RecorderWorkers) -> None:
    d = workers.start()
    with pytest.raises(ValueError) as exc:
        client(transport, d.topic).call(CTXT, "fail", tag="t-9")
    assert type(exc.value) is ValueError
    assert "recorder was asked to fail" in str(exc.value) and "t-9" in str(exc.value)
    assert len(records(d, method="fail")) == 1
    # the caller got its answer: acked, not handled again
    assert client(transport, d.topic).call(CTXT, "record", after=1) == {"after": 1}
    assert len(records(d, method="fail")) == 1


@pytest.mark.parametrize(
    "method", ["no_such_method", "_write", "__init__", "handle_message", "target"]
)
def test_no_such_method(transport: Any, workers: RecorderWorkers, method: str) -> None:
    d = workers.start()
    with pytest.raises(om.RemoteError) as exc:
        client(transport, d.topic).call(CTXT, method, entry={"kind": "pwned"})
    assert exc.value.exc_type == "NoSuchMethod"
    assert f"Endpoint does not support RPC method {method}" in str(exc.value)
    assert records(d) == []  # nothing ran (_write would have written a line)


def test_unsupported_version(transport: Any, workers: RecorderWorkers) -> None:
    d = workers.start()
    c = client(transport, d.topic)
    for version in ("2.0", "1.1", "0.9"):
        with pytest.raises(om.RemoteError) as exc:
            c.prepare(version=version).call(CTXT, "record", v=version)
        assert exc.value.exc_type == "UnsupportedVersion"
        assert f"Endpoint does not support RPC version {version}" in str(exc.value)
    assert records(d) == []


def test_namespace_and_version_rules(transport: Any, workers: RecorderWorkers) -> None:
    d = workers.start(handler="versioned")

    def call(namespace: str | None, version: str) -> Any:
        target = om.Target(topic=d.topic, namespace=namespace, version=version)
        return om.get_rpc_client(transport, target, timeout=15).call(CTXT, "which")

    for version in ("1.0", "1.2", "1.3"):
        assert call("testns", version) == "versioned"
    for namespace, version in (
        ("testns", "1.4"),
        ("testns", "2.0"),
        ("testns", "0.9"),
        ("otherns", "1.0"),
        (None, "1.0"),
    ):
        with pytest.raises(om.RemoteError) as exc:
            call(namespace, version)
        assert exc.value.exc_type == "UnsupportedVersion", (namespace, version)


def test_call_monitor_heartbeats_keep_a_long_call_alive(
    transport: Any, workers: RecorderWorkers
) -> None:
    d = workers.start()
    c = client(transport, d.topic).prepare(call_monitor_timeout=1, timeout=30)
    # 3 s of work with a 1 s call monitor: only the heartbeats keep the call alive
    assert c.call(CTXT, "slow", seconds=3, tag="hb") == {"tag": "hb"}
    assert len(records(d, kind="rpc", method="slow")) == 1


def test_plain_call_times_out(transport: Any, workers: RecorderWorkers) -> None:
    d = workers.start()
    c = client(transport, d.topic)
    with pytest.raises(om.MessagingTimeout):
        c.prepare(timeout=1).call(CTXT, "slow", seconds=2, tag="late")
    # the late reply is dropped by the client; the next call gets its own answer
    assert c.call(CTXT, "record", tag="next") == {"tag": "next"}
    wait_for(lambda: records(d, kind="rpc", method="slow"), 10, message="the slow call finished")


class OsloEndpoint:
    """The endpoint of a REAL oslo.messaging RPC server beside the daemon."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def record(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        self.seen.append(kwargs)
        return dict(kwargs, by="oslo")


@pytest.mark.parametrize("first", ["oslo", "rpcworker"])
def test_topology_parity_with_a_real_oslo_server(
    transport: Any, workers: RecorderWorkers, first: str
) -> None:
    topic, oslo_server = workers.topic, f"oslo-{workers.uid}"
    workers.queues |= {topic, f"{topic}.{oslo_server}"}
    endpoint = OsloEndpoint()
    server = om.get_rpc_server(
        transport, om.Target(topic=topic, server=oslo_server), [endpoint]
    )  # the threading executor (18.x default)
    try:
        if first == "rpcworker":
            d = workers.start()
        server.start()
        wait_for(
            lambda: consumer_count(f"{topic}.{oslo_server}") > 0,
            15,
            message="the oslo server consuming",
        )
        if first == "oslo":
            d = workers.start()
        wait_for(
            lambda: consumer_count(topic) == 2,
            15,
            message="the oslo server and rpcworker both consuming the topic queue",
        )
        assert "PRECONDITION" not in d.log() and "406" not in d.log()
        assert d.alive()

        c = client(transport, topic)
        served = set()
        for i in range(20):
            served.add(c.call(CTXT, "record", i=i).get("by", "rpcworker"))
            if len(served) == 2:
                break
        assert served == {"oslo", "rpcworker"}
        assert c.prepare(server=oslo_server).call(CTXT, "record", to="o") == {
            "to": "o",
            "by": "oslo",
        }
        assert c.prepare(server=d.server).call(CTXT, "record", to="r") == {"to": "r"}
        c.prepare(fanout=True).cast(CTXT, "record", fan=1)
        wait_for(lambda: {"fan": 1} in endpoint.seen, 10, message="fanout at the oslo server")
        wait_for(lambda: records(d, args={"fan": 1}), 10, message="fanout at rpcworker")
        assert "PRECONDITION" not in d.log() and d.alive()
        assert consumer_count(topic) == 2  # nobody lost its consumer on the way
    finally:
        server.stop()
        server.wait()


def test_nova_style_exchange(transport: Any, workers: RecorderWorkers) -> None:
    d = workers.start(exchange="nova")
    c = om.get_rpc_client(
        transport, om.Target(topic=d.topic, exchange="nova", version="1.0"), timeout=15
    )
    assert c.call(CTXT, "record", x="nova") == {"x": "nova"}
    assert c.prepare(server=d.server).call(CTXT, "record", x="nova-s") == {"x": "nova-s"}
    c.cast(CTXT, "record", x="nova-cast")
    wait_for(lambda: len(records(d, method="record")) == 3, 10, message="the nova cast")
    # the same topic on the default 'openstack' exchange is nobody's
    with pytest.raises(om.MessagingTimeout):
        client(transport, d.topic).prepare(timeout=1).call(CTXT, "record", x="lost")
    assert [r["args"]["x"] for r in records(d)] == ["nova", "nova-s", "nova-cast"]
