"""The broker password never reaches a log line, at any level: a real run with a real,
non-default RabbitMQ user, --debug, calls served, the connection closed by the broker,
and a refused re-login (its tracebacks included). And the start-up warning for a config
file holding the password that every user can read.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.functional.conftest import BROKER_HOST, BROKER_PORT, broker_section
from tests.functional.support import daemon_config, delete_entities, plain_rpc, rabbitmqctl, run
from tests.helpers import wait_for


@pytest.fixture
def broker_user(uid: str) -> Iterator[tuple[str, str]]:
    """A real RabbitMQ user with a password full of URL-special characters."""
    user, password = f"rpcw-{uid}", f"S3cr/et@:%+{uid}-pw"
    rabbitmqctl("add_user", user, password).check_returncode()
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*").check_returncode()
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


def close_connections_of(user: str) -> int:
    """Make the broker close every connection of ``user`` (as a broker restart would)."""
    listing = rabbitmqctl("list_connections", "-q", "--no-table-headers", "user", "pid")
    closed = 0
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == user:
            rabbitmqctl("close_connection", fields[1], "closed by test_secrets")
            closed += 1
    return closed


def forms(secret: str) -> list[str]:
    """Every spelling of ``secret`` that could leak: raw, URL-quoted, and the SASL
    PLAIN/AMQPLAIN responses (raw and base64)."""
    return [
        secret,
        quote(secret, safe=""),
        quote(secret),
        base64.b64encode(secret.encode()).decode()[:-4] or secret,
    ]


@pytest.mark.parametrize("where", ["broker-section", "transport-url"])
def test_password_of_a_real_user_is_never_logged(
    daemon_factory: Any, uid: str, tmp_path: Path, broker_user: tuple[str, str], where: str
) -> None:
    user, password = broker_user
    broker = broker_section().replace("userid = guest", f"userid = {user}")
    if where == "broker-section":
        text = daemon_config(
            uid, tmp_path, broker.replace("password = guest", f"password = {password}")
        )
    else:
        url = (
            f"rabbit://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{BROKER_HOST}:{BROKER_PORT}/"
        )
        text = daemon_config(uid, tmp_path, broker, default=f"transport_url = {url}")
    log_file = tmp_path / "debug.log"
    d = daemon_factory(text, "secret", False)
    d.config_path.chmod(0o644)  # readable by every user: the daemon must say so
    d.start("--debug", "--log-file", str(log_file))
    try:
        d.wait_consuming(f"q-{uid}")
        with plain_rpc() as rpc:
            assert rpc.call(f"ex-{uid}", f"k-{uid}", "record", tag="one") == {
                "result": {"tag": "one"}
            }

        # the broker drops the connection: the worker reconnects with the same password
        assert close_connections_of(user) >= 1
        wait_for(
            lambda: log_file.read_text().count("Consuming:") >= 2,
            30,
            message="a reconnect after the broker closed the connection",
        )
        with plain_rpc() as rpc:
            assert rpc.call(f"ex-{uid}", f"k-{uid}", "record", tag="two") == {
                "result": {"tag": "two"}
            }

        # the password is changed behind its back: re-logins are refused, with errors
        rabbitmqctl("change_password", user, f"other-{uid}").check_returncode()
        close_connections_of(user)
        wait_for(
            lambda: log_file.read_text().count("ACCESS_REFUSED") >= 2,
            30,
            message="refused re-login attempts in the log",
        )
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=30) == 0
    finally:
        d.stop()
        delete_entities((f"q-{uid}",), (f"ex-{uid}",))

    logged = log_file.read_text() + d.log()
    assert " DEBUG " in logged, "the run must have logged at DEBUG"
    assert user in logged  # the log does name the user...
    assert "every user can read it (mode 0644)" in logged
    for form in forms(password):
        assert form not in logged, f"the password leaked into the log as {form!r}"


def test_private_config_file_gives_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "private.conf"
    path.write_text(
        daemon_config(
            "x",
            tmp_path,
            broker_section().replace("password = guest", "password = not-the-default"),
        )
    )
    path.chmod(0o640)
    result = run("--config-file", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout + result.stderr
    path.chmod(0o604)
    result = run("--config-file", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: config file {path} holds the broker password ([broker] password)"
        in result.stdout
    )
    assert "not-the-default" not in result.stdout + result.stderr
