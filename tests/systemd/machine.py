"""A real systemd for the unit tests: a Debian bookworm root made once with debootstrap
(cached), booted with ``systemd-nspawn --boot --register=no --keep-unit`` on the host
network, with a throw-away overlay over the cached root (``--volatile=overlay``), so every
run starts from the same clean machine and the cache is never written.

Commands run inside with ``nsenter`` into the container's namespaces (``--register=no``:
there is no machined to ask). rpcworker is installed in it from wheels built on the host,
``pip --no-index --find-links``, exactly as the systemd page of the docs says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: where the root lives between runs (CI runs on the same machine and reuses it)
ROOT = Path(os.environ.get("RPCWORKER_SYSTEMD_ROOT", "/var/cache/rpcworker-systemd/bookworm"))
SUITE = "bookworm"
MIRROR = os.environ.get("RPCWORKER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,procps"
REPO = Path(__file__).resolve().parents[2]


def unavailable() -> str | None:
    """Why this machine cannot boot the test bed, or None."""
    if os.geteuid() != 0:
        return "not root (systemd-nspawn and debootstrap need root)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    return None


def build_root() -> Path:
    """The cached root; made with debootstrap when missing (a few minutes, once)."""
    if (ROOT / "usr" / "lib" / "systemd" / "systemd").exists() and (
        ROOT / "usr" / "bin" / "python3"
    ).exists():
        return ROOT
    tmp = ROOT.with_name(ROOT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(tmp), MIRROR],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    # a machine id of its own, and no getty on a console nobody reads
    (tmp / "etc" / "machine-id").write_text("")
    (tmp / "etc" / "hostname").write_text("rpcworker-test\n")
    shutil.rmtree(ROOT, ignore_errors=True)
    tmp.rename(ROOT)
    return ROOT


def build_wheels(into: Path) -> Path:
    """rpcworker, the test plugin and every dependency, as wheels for --no-index."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(into),
            str(REPO),
            str(REPO / "tests" / "plugin"),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return into


class Machine:
    """One booted container."""

    def __init__(self, root: Path, wheels: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--volatile=overlay",
                f"--directory={root}",
                f"--bind-ro={wheels}:/wheels",
                f"--bind-ro={REPO}:/src",
                "--console=pipe",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.leader = self._leader()
        self._wait_booted()

    def _leader(self, timeout: float = 60) -> int:
        """The container's PID 1: the ``systemd`` process below systemd-nspawn (which
        forks an intermediate process of its own first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            pids = [self.proc.pid]
            while pids:
                pid = pids.pop()
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
                pids += [
                    int(c)
                    for c in subprocess.run(
                        ["pgrep", "-P", str(pid)], capture_output=True, text=True
                    ).stdout.split()
                ]
            time.sleep(0.1)
        raise RuntimeError("systemd-nspawn started no container")

    def _wait_booted(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"the container did not boot (state {state!r}): "
            f"{self.log_path.read_text(errors='replace')[-2000:]}"
        )

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 180, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside the container, as root."""
        result = subprocess.run(
            [
                "nsenter",
                f"--target={self.leader}",
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--",
                *cmd,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8",
            },
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(
        self,
        script: str,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, check=check, timeout=timeout)

    def write(
        self,
        path: str,
        text: str,
        mode: str = "0644",
        owner: str = "root:root",
    ) -> None:
        self.run(
            "/bin/sh",
            "-ec",
            f'mkdir -p "$(dirname {path})" && cat > {path} && '
            f"chmod {mode} {path} && chown {owner} {path}",
            input=text,
        )

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.run("systemctl", "poweroff", check=False, timeout=30)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
