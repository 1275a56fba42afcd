"""A throw-away RabbitMQ node beside the default one, for tests that need their own broker.

``RabbitNode(name, amqp_port, dist_port, base_dir, config_lines).start()`` runs the node
``name`` (e.g. ``rabbit-tls@localhost``) next to the default node (``rabbit@localhost`` on
5672, which it never touches): its own ports (all on 127.0.0.1), its own rabbitmq.conf,
rabbitmq-env.conf (instead of /etc/rabbitmq/rabbitmq-env.conf, which names the default node),
enabled-plugins file, mnesia, log and pid files, all in ``base_dir``, which belongs to the
``rabbitmq`` user. The Debian ``rabbitmq-server``/``rabbitmqctl`` wrappers run the real
scripts as ``rabbitmq`` (``su``, which keeps the RABBITMQ_* variables) with the shared Erlang
cookie, so the nodes can cluster with each other.

``stop()`` stops the node gracefully (SIGTERM, then SIGKILL, by pid when it does not answer)
and leaves ``base_dir`` alone: ``start()`` again boots the same node with the same data.
``kill()`` SIGKILLs it (a crash). Used by tests/functional/tlsnode.py and tests/cluster.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.helpers import wait_for

RABBITMQ_USER = "rabbitmq"
START_TIMEOUT = 90.0
PID_FILE_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


class NodeError(RuntimeError):
    """A test node could not be started (the message says why, with its log tail)."""


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a -detached node's parent is init, which
    may be slow to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (or it just went): trust kill(0)
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a RabbitMQ command line. Its own process group: on timeout the whole group
    goes (the Debian wrappers leave the real command in a child of `su`)."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(args, 124, out, f"timed out after {timeout:.0f} s")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class RabbitNode:
    """The node ``name`` in ``base_dir`` (created if missing; never removed by this class)."""

    def __init__(
        self,
        name: str,
        amqp_port: int,
        dist_port: int,
        base_dir: Path,
        config_lines: Sequence[str],
        enabled_plugins: Sequence[str] = (),
        *,
        extra_ports: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.amqp_port = amqp_port
        self.dist_port = dist_port
        self.base = base_dir
        self.config_lines = list(config_lines)
        self.enabled_plugins = list(enabled_plugins)
        self.ports = (*extra_ports, amqp_port, dist_port)  # all must be free to start
        self.pid_file = base_dir / f"{name.partition('@')[0]}.pid"
        self.log_base = base_dir / "log"
        self.started = False

    # -- files --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment of ``rabbitmq-server``: every path and port of this node."""
        b = self.base
        return dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_base),
            RABBITMQ_PID_FILE=str(self.pid_file),
        )

    def _write_files(self) -> None:
        b = self.base
        b.mkdir(parents=True, exist_ok=True)
        (b / "rabbitmq.conf").write_text("\n".join([*self.config_lines, ""]))
        (b / "enabled_plugins").write_text(f"[{','.join(self.enabled_plugins)}].\n")
        # instead of /etc/rabbitmq/rabbitmq-env.conf, which names the default node
        (b / "rabbitmq-env.conf").write_text(
            f"NODENAME={self.name}\nERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
        )
        for sub in ("mnesia", "log"):
            (b / sub).mkdir(exist_ok=True)
        self._give_to_rabbitmq()

    def _give_to_rabbitmq(self) -> None:
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(RABBITMQ_USER)
        os.chmod(self.base, 0o755)
        for root, dirs, files in os.walk(self.base):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.chown(self.base, user.pw_uid, user.pw_gid)

    # -- control ------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NAME ARGS``."""
        return _run(["rabbitmqctl", "-n", self.name, *args], timeout=timeout)

    def check_ports(self) -> None:
        """NodeError when a port of this node is taken (a node left over from a crashed
        run), naming the command that stops it."""
        busy = [p for p in self.ports if _port_in_use(p)]
        if busy:
            raise NodeError(
                f"127.0.0.1 port(s) {busy} already in use (a {self.name} left "
                f"over from an earlier run? `rabbitmqctl -n {self.name} stop`)"
            )

    def start(self, timeout: float = START_TIMEOUT) -> RabbitNode:
        """Start the node and wait for it; on any failure stop it and raise NodeError."""
        try:
            self.launch()
            self.await_boot(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """``rabbitmq-server -detached`` (returns at once; await_boot() waits for it)."""
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise NodeError("rabbitmq-server/rabbitmqctl are not on PATH")
        if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != RABBITMQ_USER:
            raise NodeError("starting another RabbitMQ node needs root (or the rabbitmq user)")
        self.check_ports()
        self._write_files()
        self.pid_file.unlink(missing_ok=True)  # a crashed (killed) node leaves its pid file
        with open(self.base / "startup.out", "wb") as out:
            # -detached: the node outlives this call, so its output must not be a pipe
            proc = subprocess.run(
                ["rabbitmq-server", "-detached"],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
        self.started = True
        if proc.returncode != 0:
            raise NodeError(
                f"rabbitmq-server -detached exited {proc.returncode}\n{self.diagnostics()}"
            )

    def await_boot(self, deadline: float) -> None:
        """The pid file appears within seconds (a node that dies while booting, e.g. on a
        bad rabbitmq.conf, writes none and says nothing: -detached); then await_startup,
        again while the node is still registering with epmd."""
        try:
            wait_for(
                lambda: self._pid() is not None,
                PID_FILE_TIMEOUT,
                interval=0.2,
                message="its pid file",
            )
        except AssertionError:
            raise NodeError(
                f"{self.name} wrote no pid file in {PID_FILE_TIMEOUT:.0f} s: it died while "
                f"booting, and -detached hides why: run `rabbitmq-server` in the foreground "
                f"with the environment of RabbitNode.env()\n{self.diagnostics()}"
            ) from None
        last = ""
        while (left := deadline - time.monotonic()) > 0:
            if not self.alive:
                raise NodeError(
                    f"{self.name} (pid {self._pid()}) exited while booting\n{self.diagnostics()}"
                )
            ready = self.ctl(
                "await_startup", "--timeout", str(max(1, int(left))), timeout=left + 15
            )
            if ready.returncode == 0:
                return
            last = (ready.stderr or ready.stdout).strip()[-300:]
        raise NodeError(f"{self.name} did not boot in time: {last}\n{self.diagnostics()}")

    def stop(self) -> None:
        """Stop the node (if this object started it) and wait until its OS process has
        exited and its AMQP port is closed. Never raises."""
        try:
            if self.started:
                self._stop_node()
                wait_for(
                    lambda: not _port_in_use(self.amqp_port),
                    EXIT_TIMEOUT,
                    interval=0.2,
                    message=f"{self.name}'s port {self.amqp_port} to close",
                )
        except Exception:
            pass
        finally:
            self.started = False

    def _stop_node(self) -> None:
        pid = self._pid()
        if pid is None:  # no pid file (yet): stop whatever answers to the name, if anything
            self.ctl("stop", timeout=60)
            return
        if not _alive(pid):
            return
        # `stop PIDFILE` returns once the OS process has exited
        if self.ctl("stop", str(self.pid_file), timeout=60).returncode == 0:
            wait_for(lambda: not _alive(pid), EXIT_TIMEOUT, message=f"{self.name} to exit")
            return
        self._signal(pid, signal.SIGTERM, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the node's OS process (a crash); returns once it is gone."""
        pid = self._pid()
        if pid is not None:
            self._signal(pid, signal.SIGKILL)
        self.started = False

    def _signal(self, pid: int, *signals: signal.Signals) -> None:
        """Send each signal in turn until the process has gone."""
        for sig in signals:
            try:
                os.kill(pid, sig)
                wait_for(
                    lambda: not _alive(pid),
                    EXIT_TIMEOUT,
                    message=f"{self.name} (pid {pid}) to exit",
                )
                return
            except ProcessLookupError:
                return
            except AssertionError:
                continue
        raise NodeError(f"{self.name} (pid {pid}) did not exit on {signals[-1].name}")

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        """The node's OS process (by its pid file) is running."""
        pid = self._pid()
        return pid is not None and _alive(pid)

    def diagnostics(self) -> str:
        """The tail of the node's start-up output and log, for error messages."""
        parts = []
        for path in [self.base / "startup.out", *sorted(self.log_base.glob("*.log"))]:
            try:
                tail = path.read_text(errors="replace").strip().splitlines()[-12:]
            except OSError:
                continue
            if tail:
                parts.append(f"--- {self.name} {path.name}:\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no output from {self.name})"
