"""TLS to the broker: the real daemon and rpcworker-client against a second RabbitMQ node
(``rabbit-tls@localhost``, TLS on 127.0.0.1:5681) that this module starts and stops.

The node's certificate is signed by CA-1 and valid for ``DNS:localhost`` only; CA-2 signed
nothing it presents; the client certificate (CA-1) has CN ``rpcworker-tls-client``, a user
of the node, for SASL EXTERNAL. See tests/functional/tlsnode.py.

Run under the shared broker lock:
``flock /tmp/rpcworker-broker.lock .venv/bin/pytest -q tests/functional/test_tls.py``
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import HOST_INSTALL_ONLY, ON_HOST_BROKER, broker_up
from tests.functional.tlsnode import CLIENT_CN, NODE, TLS_PORT, Certs, NodeError, TLSNode
from tests.helpers import wait_for

_SCRIPT = Path(sys.executable).with_name("rpcworker-client")
CLIENT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "rpcworker.cmd.client"]
CONNECT_FAILED = "Cannot connect to the broker at"

#: the TLS node comes from the host's RabbitMQ install and is checked against the host's
#: default node: nothing here is about the broker under test when that is the 4.x node
pytestmark = pytest.mark.skipif(not ON_HOST_BROKER, reason=HOST_INSTALL_ONLY)


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _default_node_users() -> str:
    """The users of the default node (rabbit@localhost), which must not change."""
    return subprocess.run(
        ["rabbitmqctl", "-n", "rabbit@localhost", "list_users", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def _start_node() -> TLSNode:
    node = TLSNode()
    try:
        node.start()
        node.add_user(CLIENT_CN)  # no password: it can only log in with EXTERNAL
    except (NodeError, OSError, subprocess.SubprocessError) as exc:
        node.stop()
        summary = str(exc).splitlines()[0]
        if _ci():
            pytest.fail(f"the TLS test node {NODE} did not start: {exc}", pytrace=False)
        print(
            f"\n*** SKIPPING TLS tests: the TLS test node {NODE} did not start: {summary} "
            "(CI=true makes this a failure) ***",
            file=sys.stderr,
        )
        pytest.skip(f"TLS test node did not start: {summary}")
    return node


@pytest.fixture(scope="module")
def tls_node() -> Iterator[TLSNode]:
    """The running TLS node; stopped and removed after the module, and the default node
    checked: still up, same users."""
    users = _default_node_users()
    node = _start_node()
    try:
        yield node
    finally:
        node.stop()
    assert not node.base.exists()
    assert broker_up(), "the default broker (rabbit@localhost) must still be running"
    assert _default_node_users() == users, "the default node's users changed"


@pytest.fixture
def certs(tls_node: TLSNode) -> Certs:
    return tls_node.certs


def config(uid: str, certs: Certs, transport_url: str | None = None, **broker: Any) -> str:
    """A daemon (and client) config: one rpc binding on the echo handler, topic tls-UID.
    ``broker`` overrides [broker] options; a value of None leaves the option out."""
    options: dict[str, Any] = {
        "hostname": "localhost",
        "port": TLS_PORT,
        "userid": "guest",
        "password": "guest",
        "ssl": "true",
        "ssl_ca_file": certs.ca,
        "heartbeat": 10,
        "connect_timeout": 5,
        "reconnect_interval_start": 0.5,
        "reconnect_interval_step": 0.5,
        "reconnect_interval_max": 1,
    }
    options.update(broker)
    lines = ["[DEFAULT]", "bindings = echo", f"host = tls-{uid}", "graceful_shutdown_timeout = 5"]
    if transport_url:
        lines.append(f"transport_url = {transport_url}")
    lines += ["", "[broker]"]
    lines += [f"{k} = {v}" for k, v in options.items() if v is not None]
    lines += ["", "[binding:echo]", "type = rpc", "handler = echo", f"topic = tls-{uid}", ""]
    return "\n".join(lines)


def call(daemon: Any, uid: str, **args: Any) -> subprocess.CompletedProcess[str]:
    """``rpcworker-client call tls-UID echo`` with the daemon's own config file."""
    return subprocess.run(
        [
            *CLIENT,
            "--config-file",
            str(daemon.config_path),
            "call",
            f"tls-{uid}",
            "echo",
            "--timeout",
            "20",
            "--args",
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def until(condition: Callable[[], object], daemon: Any, what: str, timeout: float = 20) -> None:
    """wait_for(), failing with the daemon's log as it is at the deadline."""
    try:
        wait_for(condition, timeout, message=what)
    except AssertionError as exc:
        pytest.fail(f"{exc}; daemon log tail:\n{daemon.log_tail()}", pytrace=False)


def serves(daemon: Any, uid: str) -> None:
    """The daemon gets ready and answers a call made over TLS by rpcworker-client."""
    until(lambda: "Consuming:" in daemon.log() or not daemon.alive(), daemon, "consuming")
    assert daemon.alive() and "Consuming:" in daemon.log(), daemon.log_tail()
    p = call(daemon, uid, x=1, tag=uid)
    assert (p.returncode, p.stderr) == (0, ""), daemon.log_tail()
    assert json.loads(p.stdout) == {"x": 1, "tag": uid}


def refused_lines(daemon: Any, count: int = 2) -> list[str]:
    """Wait for ``count`` failed connection attempts; the daemon is still running."""

    def lines() -> list[str]:
        return [ln for ln in daemon.log().splitlines() if CONNECT_FAILED in ln]

    until(
        lambda: len(lines()) >= count or not daemon.alive(),
        daemon,
        f"{count} failed connection attempts",
    )
    assert daemon.alive(), daemon.log_tail()
    return lines()


def stops_cleanly(daemon: Any) -> None:
    """Never connected, never ready; SIGTERM ends it with status 0."""
    log = daemon.log()
    assert "Connected to the broker" not in log and "Consuming:" not in log
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=20) == 0, daemon.log_tail()


def tls_connections(node: TLSNode, user: str, mechanism: str | None = None) -> int:
    return sum(
        1
        for u, m, tls in node.connections()
        if u == user and tls and (mechanism is None or m == mechanism)
    )


# -- the tests ------------------------------------------------------------------------


def test_worker_serves_calls_over_tls(
    tls_node: TLSNode, certs: Certs, daemon_factory: Any, uid: str
) -> None:
    """hostname = localhost, ssl_ca_file = CA-1: the daemon connects over TLS (the name
    checked is "localhost", not the 127.0.0.1 py-amqp dials) and serves a call."""
    d = daemon_factory(config(uid, certs))
    serves(d, uid)
    assert tls_connections(tls_node, "guest") >= 1  # the broker sees a TLS connection
    assert "(TLS)" in d.log()  # "rpcworker starting: broker amqp://guest:***@... (TLS)"


def test_amqps_transport_url(
    tls_node: TLSNode, certs: Certs, daemon_factory: Any, uid: str
) -> None:
    """amqps:// turns TLS on by itself; [broker] gives only the CA."""
    url = f"amqps://guest:guest@localhost:{TLS_PORT}/"
    d = daemon_factory(
        config(uid, certs, url, ssl=None, hostname=None, port=None, userid=None, password=None)
    )
    serves(d, uid)


def test_untrusted_ca_is_refused(
    tls_node: TLSNode, certs: Certs, daemon_factory: Any, uid: str
) -> None:
    """ssl_ca_file = CA-2: every attempt fails with a clear line, the daemon keeps
    retrying, never becomes ready and stops cleanly on SIGTERM; the client exits 4."""
    d = daemon_factory(config(uid, certs, ssl_ca_file=certs.other_ca))
    line = refused_lines(d)[0]
    assert f"{CONNECT_FAILED} amqp://guest:**@localhost:{TLS_PORT}//" in line
    assert "SSLCertVerificationError" in line and "certificate verify failed" in line
    assert "not signed by a trusted CA" in line and "ssl_ca_file" in line
    p = call(d, uid, x=1)
    assert p.returncode == 4 and "certificate verify failed" in p.stderr, p.stderr
    stops_cleanly(d)


def test_hostname_mismatch(tls_node: TLSNode, certs: Certs, daemon_factory: Any, uid: str) -> None:
    """hostname = 127.0.0.1 is not in the certificate (DNS:localhost only): refused with a
    line naming the mismatch. ssl_verify_hostname = false accepts the same connection
    (the chain is still verified against CA-1)."""
    strict = daemon_factory(config(uid, certs, hostname="127.0.0.1"), name="strict")
    relaxed = daemon_factory(
        config(uid, certs, hostname="127.0.0.1", ssl_verify_hostname="false"), name="relaxed"
    )
    line = refused_lines(strict)[0]
    assert f"{CONNECT_FAILED} amqp://guest:**@127.0.0.1:{TLS_PORT}//" in line
    assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in line
    assert "ssl_verify_hostname = false" in line
    serves(relaxed, uid)
    stops_cleanly(strict)


def test_external_login_with_client_certificate(
    tls_node: TLSNode, certs: Certs, daemon_factory: Any, uid: str
) -> None:
    """login_method = EXTERNAL with the client certificate and no password: the broker
    logs the daemon (and the client) in as the certificate's CN."""
    d = daemon_factory(
        config(
            uid,
            certs,
            login_method="EXTERNAL",
            userid=None,
            password="",
            ssl_cert_file=certs.client_cert,
            ssl_key_file=certs.client_key,
        )
    )
    serves(d, uid)
    assert tls_connections(tls_node, CLIENT_CN, "EXTERNAL") >= 1
    assert "ACCESS_REFUSED" not in d.log()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tls_failover_verifies_each_host_by_its_own_name(
    tls_node: TLSNode, certs: Certs, daemon_factory: Any, uid: str
) -> None:
    """The first host (127.0.0.1, nothing listening) is down; the second, localhost, is the
    TLS node. Stock kombu would check localhost's certificate against "127.0.0.1"."""
    down = _closed_port()
    url = f"amqps://guest:guest@127.0.0.1:{down},guest:guest@localhost:{TLS_PORT}/"
    d = daemon_factory(config(uid, certs, url, ssl=None, hostname=None, port=None))
    serves(d, uid)
    log = d.log()
    assert f"{CONNECT_FAILED} amqp://guest:**@127.0.0.1:{down}//: ConnectionRefusedError" in log
    assert "mismatch" not in log
    assert any(
        f":{TLS_PORT}/" in ln for ln in log.splitlines() if "Connected to the broker at" in ln
    ), d.log_tail()
