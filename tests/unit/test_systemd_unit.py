"""The shipped systemd units are valid and match the daemon's behaviour."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rpcworker.config import opts

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNITS / "rpcworker.service"
TEMPLATE = UNITS / "rpcworker@.service"
BOTH = pytest.mark.parametrize("path", [SERVICE, TEMPLATE], ids=lambda p: p.name)

Unit = dict[str, dict[str, list[str]]]


def parse(path: Path) -> Unit:
    """section -> key -> every value in order (systemd allows repeated keys)."""
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(path: Path) -> dict[str, str]:
    """[Service], the last value of each key (what systemd uses for single-valued keys)."""
    return {k: v[-1] for k, v in parse(path)["Service"].items()}


def graceful_default() -> int:
    return int(next(o.default for o in opts.default_opts if o.name == "graceful_shutdown_timeout"))


def seconds(value: str) -> float:
    """A systemd time span in seconds ("90", "90s", "1min 30s", "2min")."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_instances_read_their_own_config_file() -> None:
    assert re.search(
        r"rpcworker --config-file /etc/rpcworker/rpcworker\.conf$", service(SERVICE)["ExecStart"]
    )
    template = service(TEMPLATE)
    assert re.search(r"rpcworker --config-file /etc/rpcworker/%i\.conf$", template["ExecStart"])
    assert "%i" in template["SyslogIdentifier"]
    assert "%i" in parse(TEMPLATE)["Unit"]["Description"][-1]


def test_the_template_differs_only_in_its_instance_settings() -> None:
    own = {"ExecStart", "SyslogIdentifier"}
    a, b = parse(SERVICE)["Service"], parse(TEMPLATE)["Service"]
    assert {k: v for k, v in a.items() if k not in own} == {
        k: v for k, v in b.items() if k not in own
    }
    assert parse(SERVICE)["Install"] == parse(TEMPLATE)["Install"]


@BOTH
def test_unit_runs_the_daemon_unprivileged_and_restarts_on_failure(path: Path) -> None:
    s = service(path)
    assert s["User"] and s["User"] != "root"
    assert s.get("Group") == s["User"]  # the group that can read /etc/rpcworker
    assert s["Restart"] == "on-failure"
    assert "2" in s["RestartPreventExitStatus"].split()  # config errors


@BOTH
def test_unit_uses_the_notify_protocol(path: Path) -> None:
    s = service(path)
    assert s["Type"] == "notify"
    assert s["NotifyAccess"] == "main"  # the main process (or the supervisor) sends everything
    assert 5 <= seconds(s["WatchdogSec"]) <= 120  # the loop wakes at least every second
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"


@BOTH
def test_stop_signals_the_main_process_and_outlasts_the_graceful_timeout(path: Path) -> None:
    s = service(path)
    assert s["KillMode"] == "mixed"
    assert s.get("KillSignal", "SIGTERM") == "SIGTERM"
    # the drain (graceful_shutdown_timeout) must finish before SIGKILL
    assert seconds(s["TimeoutStopSec"]) > graceful_default()


@BOTH
def test_unit_is_hardened(path: Path) -> None:
    s = service(path)
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    assert {k: s.get(k) for k in expected} == expected
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in parse(path)["Service"]["SystemCallFilter"]


@BOTH
def test_systemd_analyze_verify(path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    # the binary exists only once installed: that is the only complaint allowed
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert problems == [], problems
