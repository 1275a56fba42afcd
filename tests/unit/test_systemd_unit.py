"""The shipped systemd unit is valid and matches the daemon's behaviour."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rpcworker import opts

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "rpcworker.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_the_daemon_unprivileged_and_restarts_on_failure() -> None:
    service = unit()["Service"]
    assert re.search(r"rpcworker --config-file /etc/rpcworker/rpcworker.conf$",
                     service["ExecStart"])
    assert service["User"] and service["User"] != "root"
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()  # config errors


def test_stop_timeout_is_longer_than_the_graceful_timeout() -> None:
    graceful = next(o.default for o in opts.default_opts if o.name == "graceful_shutdown_timeout")
    assert int(unit()["Service"]["TimeoutStopSec"]) > graceful


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True,
                            timeout=60)
    # the binary exists only once installed: that is the only complaint allowed
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert problems == [], problems
