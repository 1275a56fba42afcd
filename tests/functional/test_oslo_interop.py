"""An unmodified oslo.messaging RPCClient against an rpc binding of the real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import BROKER_HOST, BROKER_PORT, broker_section

om = pytest.importorskip("oslo_messaging")
from oslo_config import cfg  # noqa: E402

CTXT = {"request_id": "req-1", "user_id": "u1", "project_id": "p1"}


@pytest.fixture(scope="module")
def transport() -> Iterator[Any]:
    om.set_transport_defaults(control_exchange="openstack")
    if not cfg.CONF._args:  # the GLOBAL CONF, as oslo.messaging 18 requires (see reference)
        cfg.CONF([], project="rpcworker-interop")
    t = om.get_rpc_transport(
        cfg.CONF, url=f"rabbit://guest:guest@{BROKER_HOST}:{BROKER_PORT}/")
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
def rpc_worker(daemon_factory: Any, uid: str) -> Any:
    topic, server = f"t-{uid}", f"s-{uid}"
    d = daemon_factory(rpc_config(topic, server))
    d.wait_consuming(topic, f"{topic}.{server}")
    d.topic, d.server = topic, server
    return d


def client(transport: Any, topic: str, **kw: Any) -> Any:
    return om.get_rpc_client(transport, om.Target(topic=topic, version="1.0"), timeout=15, **kw)


def test_call_returns_result(transport: Any, rpc_worker: Any) -> None:
    assert client(transport, rpc_worker.topic).call(CTXT, "echo", x=1, y=[1, 2]) == {
        "x": 1, "y": [1, 2]}


def test_context_reaches_handler(transport: Any, rpc_worker: Any) -> None:
    got = client(transport, rpc_worker.topic).call(CTXT, "context")
    assert {k: got[k] for k in CTXT} == CTXT
    assert "client_timeout" in got


def test_server_targeted_call(transport: Any, rpc_worker: Any) -> None:
    c = client(transport, rpc_worker.topic).prepare(server=rpc_worker.server)
    assert c.call(CTXT, "echo", x=4) == {"x": 4}
