"""A RabbitMQ 4.x node for the tests, beside the host's 3.10 one, which it never touches.

The host runs RabbitMQ 3.10 (Debian bookworm); 4.x needs a newer Erlang than bookworm has,
so the 4.x node runs from a Debian unstable root made once with debootstrap (cached, like
tests/systemd/machine.py's bookworm root) in ``systemd-nspawn`` WITHOUT ``--boot``: the
container's only job is ``rabbitmq-server``, run directly as the root's ``rabbitmq`` user.
``--volatile=overlay`` puts a throw-away layer over the cached root, so a run never writes
the cache; ``--register=no --keep-unit`` because there is no machined to ask.

Why each choice:

* Host network (no ``--private-network``): the tests reach the node on 127.0.0.1:PORT as
  they reach the host's. So every port is its own: AMQP ``amqp_port`` (5673 for the
  permissive node, 5674 for the strict one), Erlang distribution ``amqp_port + 20000``
  and an epmd of its own on ``amqp_port - 1300`` (``ERL_EPMD_PORT``: 4373/4374), so the
  node never registers with the host's epmd on 4369. Node names ``rabbit4@localhost`` and
  ``rabbit4s@localhost``; Erlang resolves ``localhost`` through the root's /etc/hosts,
  which build_root() writes (debootstrap leaves none).
* Empty data at every start (a fresh directory bound on /var/lib/rabbitmq, owned by the
  root's rabbitmq uid/gid, not the host's): a node cannot deny a deprecated feature that
  its existing data already uses, and a test bed must not inherit the last run's queues.
* Its own /etc/rabbitmq (a read-only bind of the run directory's ``etc``): rabbitmq.conf
  with the listener on 127.0.0.1:PORT and, when strict, the deprecated features denied;
  ``[].`` plugins; an empty rabbitmq-env.conf.
* ``rabbitmqctl`` from the host: the host's 3.10 CLI cannot talk to a 4.x node, so
  ``ctl()`` (and the ``<rundir>/rabbitmqctl`` wrapper written at start, for tests that run
  ``rabbitmqctl`` as a subprocess: RPCWORKER_TEST_RABBITMQCTL) runs the root's CLI with
  ``nsenter`` into the container, as the root's rabbitmq user (its Erlang cookie).
* NOTIFY_SOCKET is unset for the server: nspawn sets one, and 4.3's systemd app crashes
  the boot on it (``case_clause`` in systemd_sup:notify_socket/0).

Checked on RabbitMQ 4.3.6, Erlang/OTP 29.1.2 (Debian sid, December 2026):

* Stock 4.3.6 already DENIES ``global_qos`` (and ``queue_master_locator``,
  ``amqp_address_v1``) by default; ``transient_nonexcl_queues`` is permitted by default.
  So the "permissive" node is the stock configuration, not one that permits everything.
* Strict node, ``queue.declare`` of a non-durable, non-exclusive queue (auto-delete or
  not): the broker closes the CONNECTION (not just the channel), code 541, py-amqp
  raises ``amqp.exceptions.InternalError`` for ``Queue.declare`` (50, 10). The reply text,
  cut by the broker to an AMQP short string (255 bytes)::

    INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.
    Its use is not permitted per the configuration (overriding the default, which is permitted):
        "deprecated_features.permit.transient_nonexcl_queues = false"
    Its use will not be permit...

  A durable queue and an exclusive (server-named or not) queue are accepted.
* ``basic.qos(global=True)`` (strict node, and stock 4.3.6 alike): NOT refused; the broker
  answers ``basic.qos-ok``, logs at error level ``Deprecated features: `global_qos`:
  Feature `global_qos` is deprecated. By default, this feature is not permitted anymore.``
  (with the ``deprecated_features.permit.global_qos = true`` hint), and ignores the
  global flag: the prefetch applies per consumer (global prefetch 1, two consumers on one
  channel: one unacknowledged delivery EACH).
* ``deprecated_features.permit.classic_queue_mirroring = false`` is accepted (the feature
  is in the "removed" phase); the node starts with it.

As a command line (the node outlives the command; its state is under /run)::

    python -m tests.rabbit4node build
    eval "$(python -m tests.rabbit4node start --port 5673 [--strict])"
    python -m tests.rabbit4node ctl --port 5673 list_queues
    python -m tests.rabbit4node env --port 5673
    python -m tests.rabbit4node stop --port 5673
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: where the root lives between runs (CI runs on the same machine and reuses it)
ROOT = Path(os.environ.get("RPCWORKER_RABBIT4_ROOT", "/var/cache/rpcworker-rabbitmq4/sid"))
SUITE = "sid"
MIRROR = os.environ.get("RPCWORKER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "rabbitmq-server,procps"
#: state, config and the rabbitmqctl wrapper of the node on PORT: RUN_BASE/rpcworker-rabbit4-PORT
RUN_BASE = Path(os.environ.get("RPCWORKER_RABBIT4_RUN", "/run"))
#: the data directories (on disk: /run is often a small tmpfs)
DATA_BASE = Path(os.environ.get("RPCWORKER_RABBIT4_DATA", "/var/tmp"))

PERMISSIVE_PORT = 5673
STRICT_PORT = 5674
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: what the strict node denies (4.3.6 accepts each; see the module docstring)
STRICT_LINES = (
    "deprecated_features.permit.transient_nonexcl_queues = false",
    "deprecated_features.permit.global_qos = false",
    "deprecated_features.permit.classic_queue_mirroring = false",
)
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
BUILD_HINT = (
    "build it once with `.venv/bin/python -m tests.rabbit4node build` as root "
    "(debootstrap of Debian sid with rabbitmq-server, about a minute)"
)


class Rabbit4Error(RuntimeError):
    """The 4.x root could not be built or its node did not start (the message says why)."""


# -- the root ---------------------------------------------------------------------------


def unavailable() -> str | None:
    """Why this machine cannot run the 4.x node, or None."""
    if os.geteuid() != 0:
        return "not root (systemd-nspawn, nsenter and debootstrap need root)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
        ("pgrep", "procps"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    return None


def root_ready(root: Path = ROOT) -> bool:
    """``root`` holds a complete rabbitmq-server install (debootstrap finished)."""
    return (root / SERVER.lstrip("/")).exists() and (root / CTL.lstrip("/")).exists()


def build_root(root: Path = ROOT) -> Path:
    """The cached root; made with debootstrap when missing (about a minute, once), in
    ``ROOT.tmp`` renamed when complete, so an interrupted build never looks finished."""
    if not root_ready(root):
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={PACKAGES}",
                    SUITE,
                    str(tmp),
                    MIRROR,
                ],
                check=True,
                capture_output=True,
                timeout=1800,
            )
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (exc.stdout + exc.stderr).decode(errors="replace").strip()[-1500:]
            raise Rabbit4Error(
                f"debootstrap {SUITE} into {tmp} exited {exc.returncode}:\n{tail}"
            ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Rabbit4Error(f"debootstrap {SUITE} into {tmp}: {exc}") from None
        _write_hosts(tmp)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    _write_hosts(root)  # a root cached before this file was written
    return root


def _write_hosts(root: Path) -> None:
    """/etc/hosts naming localhost: node names ``NAME@localhost`` must resolve, and a
    debootstrap root has no /etc/hosts."""
    hosts = root / "etc" / "hosts"
    if not hosts.exists() or "localhost" not in hosts.read_text():
        hosts.write_text(HOSTS)


def rabbitmq_ids(root: Path = ROOT) -> tuple[int, int]:
    """(uid, gid) of the root's ``rabbitmq`` user: its files in our binds must be its own,
    whatever that number means on the host."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "rabbitmq":
            return int(fields[2]), int(fields[3])
    raise Rabbit4Error(f"{root}/etc/passwd has no rabbitmq user (is rabbitmq-server installed?)")


def installed_version(root: Path = ROOT) -> str:
    """The root's rabbitmq-server version, from its install directory name ('' if none)."""
    found = sorted((root / "usr" / "lib" / "rabbitmq" / "lib").glob("rabbitmq_server-*"))
    return found[-1].name.partition("-")[2] if found else ""


# -- processes --------------------------------------------------------------------------


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _is_namespace_init(pid: int) -> bool:
    """``pid`` is PID 1 of a PID namespace below ours (its NSpid ends in 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return len(ids) > 1 and ids[-1] == "1"
    return False


def _run(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group: on timeout the whole group goes (nsenter
    forks the command it runs in the container)."""
    proc = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(list(args), 124, out, f"timed out after {timeout:.0f} s")
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


def _wait_gone(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True once ``pid`` has exited (reaped when it is our child) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def run_dir(port: int) -> Path:
    """State, config and the rabbitmqctl wrapper of the node on ``port``."""
    return RUN_BASE / f"rpcworker-rabbit4-{port}"


# -- the node ---------------------------------------------------------------------------


class Rabbit4Node:
    """The 4.x node on 127.0.0.1:``amqp_port`` (strict: the deprecated features denied).

    ``start()`` boots it from empty data and waits for it; ``stop()`` stops it and removes
    its data. ``ctl(*args)`` is its rabbitmqctl; ``url``, ``port``, ``version`` and
    ``test_env()`` tell the tests where it is. ``attach(port)`` finds a node started by
    another process (``python -m tests.rabbit4node start``) by its state file.
    """

    def __init__(self, amqp_port: int, strict: bool = False, *, root: Path | None = None) -> None:
        self.port = amqp_port
        self.strict = strict
        self.root = root or ROOT
        self.node = f"rabbit4{'s' if strict else ''}@localhost"
        self.epmd_port = amqp_port - 1300
        self.dist_port = amqp_port + 20000
        self.rundir = run_dir(amqp_port)
        self.data: Path | None = None
        self.uid, self.gid = -1, -1
        self.nspawn_pid: int | None = None
        self.leader: int | None = None  # the container's PID 1, for nsenter
        self.version = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- where it is ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def wrapper(self) -> Path:
        """An executable ``rabbitmqctl`` for this node (RPCWORKER_TEST_RABBITMQCTL)."""
        return self.rundir / "rabbitmqctl"

    @property
    def log_path(self) -> Path:
        return self.rundir / "node.log"

    @property
    def state_path(self) -> Path:
        return self.rundir / "state.json"

    def test_env(self) -> dict[str, str]:
        """The environment that points tests/functional at this node."""
        return {
            "RPCWORKER_TEST_BROKER_PORT": str(self.port),
            "RPCWORKER_TEST_RABBITMQCTL": str(self.wrapper),
            "RPCWORKER_TEST_BROKER_SERIES": self.version.partition(".")[0] or "4",
            "RPCWORKER_TEST_BROKER_VERSION": self.version,
        }

    # -- start ----------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> Rabbit4Node:
        """Boot the node and wait until it serves AMQP; on any failure stop it (and
        remove what it made) and raise Rabbit4Error with the tail of its log."""
        try:
            self._launch()
            self._await(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        self._save_state()
        return self

    def _launch(self) -> None:
        problem = unavailable()
        if problem:
            raise Rabbit4Error(f"cannot run the RabbitMQ 4.x node: {problem}")
        if not root_ready(self.root):
            raise Rabbit4Error(f"no RabbitMQ 4.x root at {self.root}: {BUILD_HINT}")
        _write_hosts(self.root)
        self._check_free()
        self.uid, self.gid = rabbitmq_ids(self.root)
        shutil.rmtree(self.rundir, ignore_errors=True)  # a stale one: its ports are free
        self._write_config()
        self.data = self._make_data()
        with open(self.log_path, "wb") as log:
            # its own session: the node may outlive this process (the CLI's `start`)
            self._proc = subprocess.Popen(
                self._nspawn_argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.nspawn_pid = self._proc.pid
        self._save_state()  # `stop` can find a node that hangs while booting
        self.leader = self._find_leader()
        self._write_wrapper()
        self._save_state()

    def _check_free(self) -> None:
        busy = [p for p in (self.port, self.dist_port, self.epmd_port) if _port_in_use(p)]
        if busy:
            raise Rabbit4Error(
                f"127.0.0.1 port(s) {busy} already in use (a {self.node} left over from an "
                f"earlier run? `python -m tests.rabbit4node stop --port {self.port}`)"
            )

    def _write_config(self) -> None:
        etc = self.rundir / "etc"
        etc.mkdir(parents=True)
        os.chmod(self.rundir, 0o755)
        lines = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
        if self.strict:
            lines += STRICT_LINES
        (etc / "rabbitmq.conf").write_text("\n".join([*lines, ""]))
        (etc / "enabled_plugins").write_text("[].\n")
        (etc / "rabbitmq-env.conf").write_text("")  # not the root's (it names no node)
        for path in (etc, *etc.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

    def _make_data(self) -> Path:
        """A fresh, empty /var/lib/rabbitmq with an Erlang cookie of its own: the server
        and our rabbitmqctl (same HOME, same uid) read it; nobody else can."""
        DATA_BASE.mkdir(parents=True, exist_ok=True)
        data = Path(tempfile.mkdtemp(prefix=f"rpcworker-rabbit4-{self.port}-", dir=DATA_BASE))
        cookie = data / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        os.chmod(cookie, 0o400)
        os.chmod(data, 0o750)
        for path in (data, cookie):
            os.chown(path, self.uid, self.gid)
        return data

    def _nspawn_argv(self) -> list[str]:
        assert self.data is not None
        env = {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_LOGS": "-",  # to nspawn's output: node.log, outside the container
            "HOME": "/var/lib/rabbitmq",
            "LANG": "C.UTF-8",
        }
        return [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--volatile=overlay",
            "--as-pid2",  # a stub init reaps epmd and friends; beam is not PID 1
            "--console=pipe",
            f"--machine=rabbit4-{self.port}",
            f"--directory={self.root}",
            f"--bind={self.data}:/var/lib/rabbitmq",
            f"--bind-ro={self.rundir / 'etc'}:/etc/rabbitmq",
            "--user=rabbitmq",
            "--rlimit=RLIMIT_NOFILE=65536",
            *(f"--setenv={k}={v}" for k, v in env.items()),
            "/usr/bin/env",
            "-u",
            "NOTIFY_SOCKET",
            SERVER,
        ]

    def _find_leader(self, timeout: float = 30) -> int:
        """The container's PID 1 (nspawn's stub init, below an intermediate process)."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Rabbit4Error(
                    f"systemd-nspawn exited {self._proc.returncode}\n{self.diagnostics()}"
                )
            pids = [self._proc.pid]
            while pids:
                pid = pids.pop()
                if _is_namespace_init(pid):
                    return pid
                pids += _children(pid)
            time.sleep(0.1)
        raise Rabbit4Error(f"systemd-nspawn started no container\n{self.diagnostics()}")

    def _await(self, deadline: float) -> None:
        """``rabbitmqctl await_startup`` (again while the node still registers with its
        epmd), then an AMQP connection from the host, which also tells the version."""
        last = ""
        while (left := deadline - time.monotonic()) > 0:
            if not self.running:
                raise Rabbit4Error(f"{self.node} exited while booting\n{self.diagnostics()}")
            wait = str(max(1, int(left)))
            ready = self.ctl("await_startup", "--timeout", wait, timeout=left + 15)
            if ready.returncode == 0:
                break
            last = (ready.stderr or ready.stdout).strip()[-300:]
            time.sleep(0.5)
        else:
            raise Rabbit4Error(f"{self.node} did not boot in time: {last}\n{self.diagnostics()}")
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.version = self._amqp_version()
                return
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
        raise Rabbit4Error(f"{self.node} booted but {self.url} does not answer AMQP: {last}")

    def _amqp_version(self) -> str:
        import kombu  # here: `build` runs with the system python3 (.ci/run), before the venv

        with kombu.Connection(self.url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            props: dict[str, Any] = conn.connection.server_properties
            version = props.get("version", "")
            return version.decode() if isinstance(version, bytes) else str(version)

    # -- rabbitmqctl ----------------------------------------------------------------

    def ctl_argv(self) -> list[str]:
        """The command line of this node's rabbitmqctl, run from the host: the root's CLI
        (the host's 3.10 one cannot talk to 4.x) in the container's namespaces, as the
        root's rabbitmq user, with the node's epmd port and a clean environment."""
        assert self.leader is not None, "the node is not running"
        return [
            "env",
            "-i",
            f"PATH={INNER_PATH}",
            "LANG=C.UTF-8",
            "HOME=/var/lib/rabbitmq",
            f"ERL_EPMD_PORT={self.epmd_port}",
            "ERL_EPMD_ADDRESS=127.0.0.1",  # the CLI starts epmd when it comes first
            "nsenter",
            f"--target={self.leader}",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            f"--setuid={self.uid}",
            f"--setgid={self.gid}",
            "--",
            CTL,
            "-n",
            self.node,
        ]

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE ARGS`` against this node."""
        return _run([*self.ctl_argv(), *args], timeout=timeout)

    def _write_wrapper(self) -> None:
        self.wrapper.write_text(
            "#!/bin/sh\n"
            f"# rabbitmqctl of {self.node} on 127.0.0.1:{self.port}: RabbitMQ 4.x in "
            "systemd-nspawn (tests/rabbit4node.py), not the host's node\n"
            f'exec {shlex.join(self.ctl_argv())} "$@"\n'
        )
        os.chmod(self.wrapper, 0o755)

    # -- stop -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Our systemd-nspawn is still running."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self.nspawn_pid is not None and _comm(self.nspawn_pid) == "systemd-nspawn"

    def stop(self) -> None:
        """``rabbitmqctl stop`` (clean), then nspawn SIGTERM (kills the container), then
        SIGKILL, each after a deadline; then remove the data and the run directory.
        Never raises."""
        try:
            self._stop_container()
        except Exception as exc:  # keep the state: `stop` can be tried again
            print(f"rabbit4node: {self.node} did not stop: {exc}", file=sys.stderr)
            return
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)
            self.data = None
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.leader = self.nspawn_pid = self._proc = None

    def _stop_container(self) -> None:
        if not self.running or self.nspawn_pid is None:
            return
        pid = self.nspawn_pid
        if self.leader is not None and _is_namespace_init(self.leader):
            self.ctl("stop", timeout=STOP_TIMEOUT)
            if _wait_gone(pid, STOP_TIMEOUT, self._proc):
                return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # nspawn SIGKILLs a container it did not --boot
        if _wait_gone(pid, 20, self._proc):
            return
        for target in (self.leader, pid):  # killing a namespace's PID 1 kills it all
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        if not _wait_gone(pid, 20, self._proc):
            raise Rabbit4Error(f"systemd-nspawn (pid {pid}) did not exit on SIGKILL")

    # -- state (for the command line) -----------------------------------------------

    def _save_state(self) -> None:
        state = {
            "port": self.port,
            "strict": self.strict,
            "root": str(self.root),
            "node": self.node,
            "data": str(self.data) if self.data else None,
            "uid": self.uid,
            "gid": self.gid,
            "nspawn_pid": self.nspawn_pid,
            "leader": self.leader,
            "version": self.version,
        }
        self.state_path.write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def attach(cls, port: int) -> Rabbit4Node:
        """The node on ``port`` as its state file describes it (Rabbit4Error if none)."""
        path = run_dir(port) / "state.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise Rabbit4Error(f"no RabbitMQ 4.x node on port {port} ({path}: {exc})") from None
        node = cls(port, bool(state["strict"]), root=Path(state["root"]))
        node.data = Path(state["data"]) if state["data"] else None
        node.uid, node.gid = int(state["uid"]), int(state["gid"])
        node.nspawn_pid, node.leader = state["nspawn_pid"], state["leader"]
        node.version = state["version"]
        return node

    def diagnostics(self) -> str:
        """The tail of the node's output (its log goes there), for error messages."""
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-25:]
        except OSError:
            return f"(no output from {self.node})"
        return f"--- {self.node} {self.log_path}:\n" + "\n".join(tail)


def start_node(port: int, strict: bool = False) -> Rabbit4Node:
    """The root built when missing, then a started node on ``port``. Any failure is a
    Rabbit4Error whose first line says what failed and how to fix it (for a skip line)."""
    problem = unavailable()
    if problem:
        raise Rabbit4Error(f"cannot run the RabbitMQ 4.x node: {problem}")
    try:
        build_root()
    except (Rabbit4Error, OSError) as exc:
        raise Rabbit4Error(
            f"no RabbitMQ 4.x root at {ROOT}, and it could not be built: {BUILD_HINT}\n{exc}"
        ) from None
    try:
        return Rabbit4Node(port, strict=strict).start()
    except (OSError, subprocess.SubprocessError) as exc:
        raise Rabbit4Error(f"the RabbitMQ 4.x node on {port} did not start: {exc}") from None


# -- command line -----------------------------------------------------------------------


def _exports(node: Rabbit4Node) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in node.test_env().items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rabbit4node",
        description="A RabbitMQ 4.x test node in systemd-nspawn, beside the host's broker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="make the cached Debian sid root if missing; print its path")
    start = sub.add_parser("start", help="start a node in the background; print export lines")
    start.add_argument("--port", type=int, default=PERMISSIVE_PORT)
    start.add_argument("--strict", action="store_true", help="deny the deprecated features")
    for name, text in (("stop", "stop the node, remove its data"), ("env", "print exports")):
        sub.add_parser(name, help=text).add_argument("--port", type=int, default=PERMISSIVE_PORT)
    ctl = sub.add_parser("ctl", help="rabbitmqctl ARGS against the node")
    ctl.add_argument("--port", type=int, default=PERMISSIVE_PORT)
    ctl.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    try:
        if opts.command == "build":
            print(build_root())
        elif opts.command == "start":
            node = start_node(opts.port, strict=opts.strict)
            print(f"# {node.node}: RabbitMQ {node.version} on {node.url}", file=sys.stderr)
            sys.stdout.write(_exports(node))
        elif opts.command == "stop":
            Rabbit4Node.attach(opts.port).stop()
        elif opts.command == "env":
            sys.stdout.write(_exports(Rabbit4Node.attach(opts.port)))
        else:
            result = Rabbit4Node.attach(opts.port).ctl(*opts.args)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.returncode
    except Rabbit4Error as exc:
        print(f"rabbit4node: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
