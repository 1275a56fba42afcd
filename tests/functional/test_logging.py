"""oslo.log destinations of the real daemon: syslog, journal, log file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import broker_section
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


def test_use_journal_without_bindings_is_a_clear_config_error(tmp_path: Path,
                                                              uid: str) -> None:
    try:
        import systemd.journal  # noqa: F401
        pytest.skip("systemd-python is installed: journal logging is available")
    except ImportError:
        pass
    path = tmp_path / "w.conf"
    path.write_text(config(uid))
    result = subprocess.run([sys.executable, "-m", "rpcworker", "--config-file", str(path),
                             "--use-journal"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[DEFAULT] use_journal" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
