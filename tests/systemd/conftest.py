"""The systemd test bed: one container booted per session (tests.systemd.machine), with
rpcworker installed by the docs' own install commands. Where the machine cannot boot it
(not root, no systemd-nspawn), the suite skips with one loud line; under CI=true it fails."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd.machine import REPO, Machine, build_root, build_wheels, unavailable

DOC = REPO / "doc" / "source" / "systemd.md"


def install_commands() -> list[str]:
    """The first ``sh`` block of the systemd page, as an operator types it, minus what
    waits forever (``journalctl -f``) and the instance lines (tested on their own); the
    package comes from the wheels built on the host, not from PyPI."""
    block = DOC.read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line or "journalctl" in line or ("@" in line and "systemctl" in line):
            continue
        line = re.sub(r"^sudo ", "", line).replace("&& sudo ", "&& ")
        line = line.replace(
            "pip install rpcworker",
            "pip install --no-index --find-links /wheels rpcworker rpcworker-testplugin",
        )
        commands.append(line)
    return commands


@pytest.fixture(scope="session")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    why = unavailable()
    if why is not None:
        line = f"*** SKIPPING systemd tests: {why}; they boot a Debian root with systemd-nspawn"
        print(f"\n{line}", file=sys.stderr)
        if os.environ.get("CI") == "true":
            pytest.fail(line)
        pytest.skip(line)
    root = build_root()
    tmp = tmp_path_factory.mktemp("systemd")
    wheels = build_wheels(tmp / "wheels")
    m = Machine(root, wheels, tmp / "nspawn.log")
    try:
        commands = install_commands()
        assert any("systemctl daemon-reload" in c for c in commands), commands
        for command in commands:
            m.sh(f"cd /src && {command}")
        yield m
    finally:
        m.close()


@pytest.fixture
def uid() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def conf_text(uid: str, bindings: str, extra: str = "") -> str:
    return f"""[DEFAULT]
bindings = {bindings}
host = sd-{uid}
graceful_shutdown_timeout = 20
{extra}
[broker]
hostname = 127.0.0.1
userid = guest
password = guest
heartbeat = 10
"""


def write_conf(m: Machine, name: str, text: str) -> str:
    path = f"/etc/rpcworker/{name}.conf"
    m.write(path, text, mode="0640", owner="root:rpcworker")
    return path


__all__ = ["Path", "conf_text", "write_conf"]
