"""The `rpcworker` command line: configuration errors, --check-config, --list-handlers,
--debug/--log-file, and secrets kept out of output and logs.

Most tests run the console script without a broker; a configuration error must
stop the daemon (exit 2, one line on stderr) before it opens any connection.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import broker_section
from tests.functional.support import (
    CLIENT,
    assert_one_line_error,
    connections_to,
    daemon_config,
    delete_entities,
    plain_rpc,
    run,
)
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONF = ROOT / "etc" / "rpcworker" / "rpcworker.conf"


def base_config(
    port: int,
    broker_extra: str = "",
    default_extra: str = "",
    binding: str = "type = direct\nhandler = recorder\nrouting_key = k",
    bindings: str = "b1",
) -> str:
    return (
        f"[DEFAULT]\nbindings = {bindings}\n{default_extra}\n"
        f"[broker]\nhostname = 127.0.0.1\nport = {port}\nconnect_timeout = 2\n"
        f"{broker_extra}\n[binding:b1]\n{binding}\n"
    )


# (id, config builder(port) -> text, substrings the one error line must contain)
BAD_CONFIGS: list[tuple[str, Any, tuple[str, ...]]] = [
    (
        "unknown-type",
        lambda p: base_config(p, binding="type = queue\nhandler = recorder"),
        ("[binding:b1]", "type"),
    ),
    (
        "missing-handler",
        lambda p: base_config(p, binding="type = direct\nrouting_key = k"),
        ("[binding:b1]", "handler"),
    ),
    (
        "missing-type",
        lambda p: base_config(p, binding="handler = recorder\nrouting_key = k"),
        ("[binding:b1]", "type"),
    ),
    (
        "direct-without-routing-key",
        lambda p: base_config(p, binding="type = direct\nhandler = recorder"),
        ("[binding:b1]", "routing_key"),
    ),
    ("port-70000", lambda p: base_config(70000), ("[broker]", "port")),
    (
        "port-abc",
        lambda p: base_config(p).replace(f"port = {p}", "port = abc"),
        ("[broker]", "port"),
    ),
    (
        "heartbeat-negative",
        lambda p: base_config(p, broker_extra="heartbeat = -1"),
        ("[broker]", "heartbeat"),
    ),
    (
        "quorum-not-durable",
        lambda p: base_config(
            p,
            binding="type = direct\nhandler = recorder\nrouting_key = k\n"
            "queue_arguments = x-queue-type:quorum\ndurable = false",
        ),
        ("[binding:b1]", "durable"),
    ),
    (
        "plugin-not-installed",
        lambda p: base_config(
            p, binding="type = direct\nhandler = no_such_plugin\nrouting_key = k"
        ),
        ("[binding:b1]", "handler", "no_such_plugin"),
    ),
    (
        "broken-import",
        lambda p: base_config(p, binding="type = direct\nhandler = broken_import\nrouting_key = k"),
        ("[binding:b1]", "handler", "broken_import"),
    ),
    (
        "broken-init",
        lambda p: base_config(p, binding="type = direct\nhandler = broken_init\nrouting_key = k"),
        ("[binding:b1]", "handler", "broken_init"),
    ),
    ("bindings-empty", lambda p: base_config(p, bindings=""), ("[DEFAULT]", "bindings")),
    (
        "topic-on-direct",
        lambda p: base_config(
            p, binding="type = direct\nhandler = recorder\nrouting_key = k\ntopic = t1"
        ),
        ("[binding:b1]", "topic"),
    ),
    (
        "transport-url-bad-scheme",
        lambda p: base_config(
            p, default_extra=f"transport_url = http://guest:guest@127.0.0.1:{p}/"
        ),
        ("[DEFAULT]", "transport_url", "scheme"),
    ),
    ("workers-0", lambda p: base_config(p, default_extra="workers = 0"), ("[DEFAULT]", "workers")),
]


@pytest.mark.parametrize("mode", ["run", "check-config"])
@pytest.mark.parametrize(
    "build,expected", [(b, e) for _, b, e in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS]
)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, trap: socket.socket, build: Any, expected: tuple[str, ...], mode: str
) -> None:
    port = trap.getsockname()[1]
    path = tmp_path / "bad.conf"
    path.write_text(build(port))
    extra = ["--check-config"] if mode == "check-config" else []
    result = run("--config-file", str(path), *extra)
    assert_one_line_error(result, expected)
    assert connections_to(trap) == 0, "a bad configuration must not touch the broker"


def test_version_of_the_daemon_and_the_client() -> None:
    import importlib.metadata

    expected = f"rpcworker {importlib.metadata.version('rpcworker')}\n"
    daemon = run("--version")
    client = subprocess.run(
        [*CLIENT, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    for result in (daemon, client):
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, "")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.conf"
    result = run("--config-file", str(missing))
    assert_one_line_error(result, ("--config-file", str(missing)))


def test_check_config_prints_the_plan() -> None:
    result = run("--config-file", str(EXAMPLE_CONF), "--check-config")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    for text in (
        "exchange 'rpcworker' type=topic durable=True",
        "queue 'rpcworker' durable=True auto_delete=False exclusive=False "
        "arguments={'x-queue-type': 'quorum'}",
        "queue 'rpcworker_fanout_<per-process id>' durable=True",
        "'x-queue-type': 'quorum', 'x-expires': 1800000",
        "exchange 'rpcworker_fanout' type=fanout",
        "exchange 'events' type=topic",
        "queue 'rpcworker-events' durable=True",
        "instance.*.create",
        "exchange 'broadcast' type=fanout",
        "configuration OK",
    ):
        assert text in out, f"{text!r} not in --check-config output:\n{out}"
    assert "amqp://guest:***@127.0.0.1:5672" in out


def test_list_handlers() -> None:
    result = run("--list-handlers")
    assert result.returncode == 0, result.stderr
    rows: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.strip() and not line.startswith(" "):
            rows[line.split()[0]] = [line]
        elif line.strip():
            rows[list(rows)[-1]].append(line.strip())
    assert "rpcworker.handlers.echo:" in rows["echo"][0]
    assert "rpcworker.handlers.log:" in rows["log"][0]
    assert "rpcworker_testplugin:Recorder" in rows["recorder"][0]
    assert "Record every call, cast and event" in rows["recorder"][0]
    # every row has a summary after the target
    for name in ("echo", "log", "recorder"):
        assert len(rows[name][0].split(None, 2)) == 3, rows[name]
    # then its RPC target and public methods (dispatcher.find_method's rule)
    assert rows["versioned"][1:] == ["target: namespace testns, version 1.3", "methods: which"]
    assert rows["echo"][1] == "target: namespace None, version 1.0"
    echo_methods = rows["echo"][2].removeprefix("methods: ").split(", ")
    assert {"echo", "fail", "context", "sleep"} <= set(echo_methods)
    assert not [m for m in echo_methods if m.startswith("_") or m == "handle_message"]
    assert rows["recorder"][2] == (
        "methods: crash, fail, flaky, hang, record, reject, requeue, slow, weigh"
    )
    assert rows["log"][2] == "methods: (any public name: decided by the handler at run time)"
    # a plugin that cannot be imported is listed on one line, without a target
    assert len(rows["broken_import"]) == 1 and "cannot be imported" in rows["broken_import"][0]
    assert "Traceback" not in result.stdout + result.stderr


def test_password_not_in_check_config_output(tmp_path: Path, uid: str) -> None:
    secret, url_secret = f"Pw-{uid}-broker", f"Pw-{uid}-url"
    path = tmp_path / "secret.conf"
    path.write_text(base_config(5672, broker_extra=f"password = {secret}"))
    result = run("--config-file", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "***" in result.stdout

    path.write_text(
        base_config(
            5672,
            default_extra=(
                f"transport_url = rabbit://someone:{url_secret}@127.0.0.1:5672,"
                f"other:{url_secret}@127.0.0.2:5672/"
            ),
        )
    )
    result = run("--config-file", str(path), "--check-config")
    assert result.returncode == 0, result.stderr
    assert url_secret not in result.stdout + result.stderr
    assert "someone:***@127.0.0.1:5672" in result.stdout


def test_debug_and_log_file(daemon_factory: Any, uid: str, tmp_path: Path) -> None:
    log_file = tmp_path / "debug.log"
    d = daemon_factory(
        daemon_config(uid, tmp_path, broker_section()),
        "debug",
        True,
        "--debug",
        "--log-file",
        str(log_file),
    )
    try:
        d.wait_consuming(f"q-{uid}")
        with plain_rpc() as rpc:
            assert rpc.call(f"ex-{uid}", f"k-{uid}", "record", tag="dbg") == {
                "result": {"tag": "dbg"}
            }
        wait_for(
            lambda: log_file.exists() and "Consuming:" in log_file.read_text(),
            15,
            message="the daemon's log lines in --log-file",
        )
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=30) == 0
        text = log_file.read_text()
        assert "rpcworker stopped" in text
        assert " INFO rpcworker." in text
        debug_lines = [line for line in text.splitlines() if " DEBUG " in line]
        assert debug_lines, f"--debug: no DEBUG line in {log_file}:\n{text}"
    finally:
        delete_entities((f"q-{uid}",), (f"ex-{uid}",))


def test_password_not_in_debug_log(daemon_factory: Any, uid: str, tmp_path: Path) -> None:
    secret = f"Sekrit-{uid}"
    broker = (
        broker_section()
        .replace("userid = guest", f"userid = nobody-{uid}")
        .replace("password = guest", f"password = {secret}")
    )
    log_file = tmp_path / "refused.log"
    d = daemon_factory(
        daemon_config(uid, tmp_path, broker),
        "refused",
        True,
        "--debug",
        "--log-file",
        str(log_file),
    )
    # the broker refuses the login: the daemon keeps retrying and logging
    wait_for(
        lambda: log_file.exists() and log_file.read_text().count("ACCESS_REFUSED") >= 2,
        30,
        message=f"refused login attempts in {log_file}",
    )
    assert d.alive()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(timeout=30) == 0
    text = log_file.read_text() + d.log()
    assert f"nobody-{uid}" in text  # the log does name the user...
    assert secret not in text  # ...but never the password
