"""Plumbing of the harness: the broker, subprocesses, probes, notify socket, RSS, facts."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import kombu

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PLUGIN = BENCH / "plugin"
JSON = "application/json"


class BenchError(RuntimeError):
    """A run that could not be measured (a contender died, a deadline passed)."""


# -- the broker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"

    @property
    def kombu_url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}//"

    @property
    def oslo_url(self) -> str:
        return f"rabbit://{self.user}:{self.password}@{self.host}:{self.port}/"

    @property
    def pika_url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/%2F"

    def config_section(self) -> str:
        return (
            f"[broker]\nhostname = {self.host}\nport = {self.port}\nuserid = {self.user}\n"
            f"password = {self.password}\n"
        )


class Broker:
    """One kombu connection of the harness: declare, count, publish, delete."""

    def __init__(self, address: BrokerAddress) -> None:
        self.address = address
        self.conn = kombu.Connection(address.kombu_url, connect_timeout=10)
        self.conn.ensure_connection(max_retries=3)
        self._channel: Any = None

    @property
    def channel(self) -> Any:
        if self._channel is None:
            self._channel = self.conn.channel()
        return self._channel

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.release()
        self.conn = kombu.Connection(self.address.kombu_url, connect_timeout=10)
        self.conn.ensure_connection(max_retries=3)
        self._channel = None

    def server_version(self) -> str:
        props = getattr(self.conn.connection, "server_properties", {}) or {}
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)

    def counts(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of ``queue`` by a passive declare.

        Raises when the queue does not exist (and then opens a new channel next time)."""
        try:
            _, ready, consumers = self.channel.queue_declare(queue=queue, passive=True)
        except Exception:
            self._channel = None
            raise
        return int(ready), int(consumers)

    def declare(self, queue: kombu.Queue) -> None:
        queue.bind(self.channel).declare()

    def publish_many(
        self,
        exchange: str,
        routing_key: str,
        bodies: Iterator[bytes] | list[bytes],
        persistent: bool = True,
        content_type: str = JSON,
    ) -> int:
        """Publish without confirms (basic.publish is asynchronous), then one round trip so
        that the broker has read them all."""
        channel = self.channel
        props = {"delivery_mode": 2 if persistent else 1}
        n = 0
        for body in bodies:
            msg = channel.prepare_message(
                body, content_type=content_type, content_encoding="utf-8", properties=props
            )
            channel.basic_publish(msg, exchange=exchange, routing_key=routing_key)
            n += 1
        self.sync()
        return n

    def sync(self) -> None:
        """A synchronous round trip: everything sent before it has been processed."""
        self.channel.basic_qos(0, 0, False)

    def delete_queues(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                self.conn.channel().queue_delete(name)

    def delete_exchanges(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                self.conn.channel().exchange_delete(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.release()


def rabbitmqctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def queue_stats(prefix: str) -> dict[str, dict[str, int]]:
    """``{name: {ready, unacked, consumers}}`` of the queues whose name starts with prefix,
    from ``rabbitmqctl list_queues`` (about 0.5 s: never inside a timed section)."""
    out = rabbitmqctl(
        "list_queues",
        "-q",
        "--formatter",
        "json",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        timeout=60,
    )
    if out.returncode != 0:
        raise BenchError(f"rabbitmqctl list_queues failed: {out.stderr.strip()}")
    found = {}
    for q in json.loads(out.stdout or "[]"):
        if q["name"].startswith(prefix):
            found[q["name"]] = {
                "ready": int(q["messages_ready"]),
                "unacked": int(q["messages_unacknowledged"]),
                "consumers": int(q["consumers"]),
            }
    return found


def delete_by_prefix(broker: Broker, prefix: str) -> None:
    """Delete every queue and exchange whose name starts with ``prefix`` (this run's)."""
    for kind, deleter in (("queues", broker.delete_queues), ("exchanges", broker.delete_exchanges)):
        out = rabbitmqctl(f"list_{kind}", "-q", "name", timeout=60)
        if out.returncode == 0:
            deleter([n for n in out.stdout.split() if n.startswith(prefix)])


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], bool] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and not alive():
            raise BenchError(f"gave up waiting for {what}: the process exited")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_consumers(
    broker: Broker, queue: str, count: int, timeout: float, alive: Callable[[], bool]
) -> float:
    """Poll (every ~2 ms) until ``queue`` has ``count`` consumers; the monotonic time at
    which that happened: the midpoint between the last poll that did not see them and the
    answer of the one that did (so within about one poll interval)."""
    deadline = time.monotonic() + timeout
    previous = time.monotonic()
    while True:
        sent = time.monotonic()
        try:
            _, consumers = broker.counts(queue)
        except Exception:
            consumers = 0
        answered = time.monotonic()
        if consumers >= count:
            return (previous + answered) / 2
        if not alive():
            raise BenchError(f"the contender exited before consuming from {queue}")
        if answered > deadline:
            raise BenchError(f"no {count} consumer(s) on {queue} after {timeout:.0f} s")
        previous = sent
        time.sleep(0.002)


# -- locking ------------------------------------------------------------------------------


@contextlib.contextmanager
def broker_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (shared with the test suites) for the block."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- subprocesses -------------------------------------------------------------------------


def plugin_env(workdir: Path) -> dict[str, str]:
    """PYTHONPATH entries so that subprocesses import ``benchmarks`` and the bench plugin.

    When ``rpcworker-benchplugin`` is not installed (``make bench`` installs it; ``make
    test`` does not), a generated ``.dist-info`` next to it makes its entry points visible to
    stevedore all the same."""
    paths = [str(ROOT), str(PLUGIN)]
    try:
        metadata.distribution("rpcworker-benchplugin")
    except metadata.PackageNotFoundError:
        site = workdir / "plugin-site"
        info = site / "rpcworker_benchplugin-0.1.0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: rpcworker-benchplugin\nVersion: 0.1.0\n"
        )
        setup_cfg = (PLUGIN / "setup.cfg").read_text()
        eps = setup_cfg.split("rpcworker.handlers =", 1)[1]
        lines = [ln.strip() for ln in eps.splitlines() if ln.strip() and "=" in ln]
        (info / "entry_points.txt").write_text("[rpcworker.handlers]\n" + "\n".join(lines) + "\n")
        paths.append(str(site))
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join(paths + ([old] if old else []))}


class Proc:
    """A contender started as a subprocess, its output in a log file."""

    registry: list[Proc] = []

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                cwd=ROOT,
            )
        self.started = time.monotonic()
        Proc.registry.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL (this process and the children it left) after timeout."""
        if self.popen.poll() is None:
            kids = descendants(self.pid)
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in [self.pid, *kids]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            for pid in kids:  # children that outlived their parent
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self in Proc.registry:
            Proc.registry.remove(self)
        return self.popen.returncode

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.registry):
            with contextlib.suppress(Exception):
                p.stop(timeout=15)


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    parents = _ppid_map()
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and all its descendants, in MB (VmRSS)."""
    total_kb = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


# -- the probe ----------------------------------------------------------------------------


def read_probes(directory: Path) -> list[dict[str, Any]]:
    found = []
    for path in directory.glob("probe-*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # being replaced
    return found


def wait_probes(
    directory: Path, n: int, timeout: float, alive: Callable[[], bool], times: bool = True
) -> list[float]:
    """Wait until the contender's processes have handled ``n`` messages between them (and,
    with ``times``, reported their times: all those times, sorted)."""
    deadline = time.monotonic() + timeout
    while True:
        probes = read_probes(directory)
        handled = sum(p["n"] for p in probes)
        if handled >= n and not times:
            return []
        if handled >= n and all("times" in p and len(p["times"]) == p["n"] for p in probes):
            return sorted(t for p in probes for t in p["times"])
        if not alive():
            raise BenchError(f"the contender exited after {handled} of {n} messages")
        if time.monotonic() > deadline:
            raise BenchError(f"only {handled} of {n} messages handled after {timeout:.0f} s")
        time.sleep(0.05)


# -- systemd notify -----------------------------------------------------------------------


class NotifyListener:
    """Plays systemd: an AF_UNIX datagram socket to pass as NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        if len(self.path) >= 100:
            raise BenchError(f"notify socket path too long: {self.path}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[tuple[float, str]] = []

    def wait_for(self, line: str, timeout: float, since: float = 0.0) -> float:
        """The monotonic time at which a datagram with ``line`` arrived (after ``since``)."""
        for t, text in self.received:
            if t >= since and line in text.split("\n"):
                return t
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                text = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            t = time.monotonic()
            self.received.append((t, text))
            if t >= since and line in text.split("\n"):
                return t
        raise BenchError(f"no {line} on the notify socket within {timeout:.0f} s")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# -- numbers and facts --------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Facts:
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def collect_facts(broker: Broker) -> Facts:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        m = re.search(r"MemTotal:\s+(\d+) kB", f.read())
        if m:
            ram = f"{int(m.group(1)) / 1024 / 1024:.1f} GiB"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = _git("rev-parse", "--short", "HEAD") or "?"
    if _git("status", "--porcelain", "--", "rpcworker"):
        commit += " + uncommitted changes in rpcworker/"
    rabbit = broker.server_version()
    return Facts(
        machine={
            "nproc": str(os.cpu_count()),
            "cpu": cpu,
            "ram": ram,
            "kernel": platform.release(),
            "load average at start": load,
        },
        versions={
            "python": platform.python_version(),
            "rabbitmq": rabbit,
            "kombu": _version("kombu"),
            "amqp": _version("amqp"),
            "oslo.messaging": _version("oslo.messaging"),
            "celery": _version("celery"),
            "dramatiq": _version("dramatiq"),
            "pika": _version("pika"),
            "rpcworker": f"{_version('rpcworker')} (git {commit})",
        },
    )
