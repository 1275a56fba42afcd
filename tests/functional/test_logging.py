"""oslo.log destinations of the real daemon: syslog, journal, log file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kombu
import pytest

from tests.functional.conftest import BROKER_URL, broker_section, delete_exchanges, delete_queues
from tests.functional.support import CLIENT
from tests.helpers import wait_for


def config(uid: str) -> str:
    return f"""\
[DEFAULT]
bindings = logt
host = log-{uid}
{broker_section()}
[binding:logt]
type = rpc
handler = echo
topic = log-{uid}
"""


def test_use_syslog_sends_to_dev_log(daemon_factory: Any, uid: str) -> None:
    if os.path.exists("/dev/log") or os.geteuid() != 0:
        pytest.skip("needs to own /dev/log (root, and no syslog daemon running) to read it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    sock.settimeout(0.5)
    received: list[bytes] = []
    try:
        d = daemon_factory(config(uid), "syslog", False)
        d.start("--use-syslog")
        d.wait_consuming(f"log-{uid}")

        def got_consuming() -> bool:
            try:
                received.append(sock.recv(65536))
            except TimeoutError:
                pass
            return any(b"Consuming" in r for r in received)

        wait_for(got_consuming, 20, message="the 'Consuming' line on /dev/log")
        assert d.stop() == 0
    finally:
        sock.close()
        os.unlink("/dev/log")
    assert any(b"rpcworker" in r for r in received)


def test_use_journal_without_bindings_is_a_clear_config_error(tmp_path: Path, uid: str) -> None:
    try:
        import systemd.journal  # noqa: F401

        pytest.skip("systemd-python is installed: journal logging is available")
    except ImportError:
        pass
    path = tmp_path / "w.conf"
    path.write_text(config(uid))
    result = subprocess.run(
        [sys.executable, "-m", "rpcworker", "--config-file", str(path), "--use-journal"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[DEFAULT] use_journal" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def json_config(uid: str) -> str:
    return f"""\
[DEFAULT]
bindings = logt, ev
host = log-{uid}
use_json = true
{broker_section()}
[binding:logt]
type = rpc
handler = echo
topic = log-{uid}

[binding:ev]
type = topic
handler = versioned
exchange = logev-{uid}
queue = logq-{uid}
routing_key = a.*
"""


def json_lines(d: Any) -> list[dict[str, Any]]:
    """Every line of the daemon's log, each parsed as JSON (a line that does not parse
    fails the test)."""
    out = []
    for line in d.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    return out


def test_use_json_every_line_is_json_with_the_message_s_fields(
    daemon_factory: Any, uid: str
) -> None:
    d = daemon_factory(json_config(uid), "json")
    try:
        d.wait_consuming(f"log-{uid}", f"logq-{uid}")
        d.wait_log("Consuming:")
        conf = str(d.config_path)
        run = [*CLIENT, "--config-file", conf]
        p = subprocess.run(
            [*run, "call", f"log-{uid}", "fail", "--arg", "message=boom"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1, p.stderr
        p = subprocess.run(
            [*run, "cast", f"log-{uid}", "no_such_method"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        with kombu.Connection(BROKER_URL, connect_timeout=5) as conn:
            kombu.Producer(conn.channel()).publish(
                {"event": 1},
                exchange=f"logev-{uid}",
                routing_key="a.b",
                message_id=f"ev-{uid}",
                serializer="json",
            )

        def found() -> list[dict[str, Any]]:
            lines = json_lines(d)
            failed = [x for x in lines if "handler echo failed on call 'fail'" in x["message"]]
            refused = [x for x in lines if "no_such_method" in x["message"]]
            event = [
                x
                for x in lines
                if "dead-lettered" in x["message"] and x["extra"].get("method") == "event"
            ]
            return [failed[0], refused[0], event[0]] if failed and refused and event else []

        failed, refused, event = wait_for(found, 20, message=f"the 3 lines ({d.log_tail()})")
        assert d.stop() == 0
    finally:
        delete_queues(f"logq-{uid}")
        delete_exchanges(f"logev-{uid}")
    lines = json_lines(d)
    assert lines and all({"message", "levelname", "name", "extra"} <= set(x) for x in lines)
    # a failed call: binding, method and its ids, in the text and as separate keys
    extra = failed["extra"]
    assert (failed["levelname"], extra["binding"], extra["method"]) == ("ERROR", "logt", "fail")
    assert len(extra["msg_id"]) == 32 and len(extra["unique_id"]) == 32
    assert f"(msg_id={extra['msg_id']!r}, unique_id={extra['unique_id']!r})" in (failed["message"])
    assert "ValueError: boom" in failed["traceback"]
    # a cast refused on receipt (no such method)
    extra = refused["extra"]
    assert (extra["binding"], extra["method"]) == ("logt", "no_such_method")
    assert "msg_id" not in extra and len(extra["unique_id"]) == 32
    assert f"unique_id={extra['unique_id']!r}" in refused["message"]
    # an event: method "event", and its AMQP message_id
    extra = event["extra"]
    assert (extra["binding"], extra["message_id"]) == ("ev", f"ev-{uid}")
    assert (
        f"event (exchange 'logev-{uid}', routing key 'a.b'; message_id='ev-{uid}')"
        in (event["message"])
    )
