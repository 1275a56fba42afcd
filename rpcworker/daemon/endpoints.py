"""The optional HTTP endpoint (``[metrics] listen``) and what it answers.

``serve_process()`` runs it in a daemon thread: ``/metrics`` (Prometheus text format,
the instruments of ``rpcworker.daemon.instruments``), ``/healthz`` (the consume loop
ticks: the same signal as the systemd watchdog; ``LoopProbe``) and ``/readyz``
(connected, every binding consumed). With ``workers`` > 1 the supervisor serves the endpoint for the
whole service from prometheus_client's multiprocess mode (``enable_multiprocess()``
before forking) and the worker processes only write their values.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
from oslo_config import cfg
from oslo_log import log as logging
from prometheus_client import CollectorRegistry, multiprocess, values
from prometheus_client.registry import Collector

from rpcworker.engine.readiness import Notifier
from rpcworker.errors import ConfigError

LOG = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: a consume loop silent for longer is stuck (/healthz 503); it ticks at least every
#: second, and a connection attempt may hold it for [broker] connect_timeout
STALE_AFTER = 30.0
#: seconds between a worker process's loop ticks forwarded to the supervisor
TICK_EVERY = 1.0

#: (HTTP status, one-line reason)
Verdict = tuple[bool, str]


def listen_address(conf: cfg.ConfigOpts) -> tuple[str, int] | None:
    """``[metrics] listen`` as (host, port); None when empty. Raises ConfigError."""
    return parse_listen(conf.metrics.listen or "")


def parse_listen(value: str) -> tuple[str, int] | None:
    value = value.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError("metrics", "listen", f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ip(value, host)
    elif ":" in host:
        raise ConfigError(
            "metrics", "listen", f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:9464"
        )
    elif not all(c.isalnum() or c in "-." for c in host):
        raise ConfigError(
            "metrics", "listen", f"{value!r}: {host!r} is not a host name or IP address"
        )
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(
            "metrics", "listen", f"{value!r}: the port must be a number from 1 to 65535"
        )
    return host, int(port_text)


def _check_ip(value: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            "metrics", "listen", f"{value!r}: {host!r} is not an IP address"
        ) from None


# -- the instruments ----------------------------------------------------------------------


# -- liveness -----------------------------------------------------------------------------


class LoopProbe:
    """A ``Notifier`` in front of another: remembers when the consume loop last sent
    WATCHDOG (it does on every turn) and its last status line, then forwards all."""

    def __init__(self, inner: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._clock = clock
        self.last_tick = clock()
        self.last_status = "not connected to the broker yet"
        self._said_ready = False  # last_status came with READY=1

    def watchdog(self) -> None:
        self.last_tick = self._clock()
        self.inner.watchdog()

    def ready(self, status: str) -> None:
        self.last_status, self._said_ready = status, True
        self.inner.ready(status)

    def status(self, status: str) -> None:
        self.last_status, self._said_ready = status, False
        self.inner.status(status)

    def stopping(self, status: str) -> None:
        self.last_status, self._said_ready = f"stopping: {status}", False
        self.inner.stopping(status)

    def extend_timeout(self, seconds: float) -> None:
        self.inner.extend_timeout(seconds)

    def reloading(self) -> None:
        self.inner.reloading()

    def health(self, stale_after: float = STALE_AFTER) -> Verdict:
        silent = self._clock() - self.last_tick
        if silent > stale_after:
            return False, f"consume loop silent for {silent:.0f} s"
        return True, "consume loop alive"

    def readiness(self, ready: bool) -> Verdict:
        """/readyz of a single process; ``ready``: the worker consumes on every binding
        (false while disconnected)."""
        if not ready and self._said_ready:  # lost, and the loop has not said why yet
            return False, "not connected to the broker"
        return ready, self.last_status


# -- the HTTP endpoint --------------------------------------------------------------------


class Endpoint:
    """``/metrics``, ``/healthz``, ``/readyz`` on a ThreadingHTTPServer in a daemon thread."""

    def __init__(
        self,
        address: tuple[str, int],
        collect: Callable[[], bytes],
        health: Callable[[], Verdict],
        ready: Callable[[], Verdict],
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, prometheus_client.CONTENT_TYPE_LATEST, collect()),
            "/healthz": lambda: _verdict(health()),
            "/readyz": lambda: _verdict(ready()),
        }
        handler = type("_Handler", (_Handler,), {"routes": routes})
        try:
            self.server = ThreadingHTTPServer(address, handler)
        except OSError as exc:
            raise ConfigError(
                "metrics",
                "listen",
                f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}",
            ) from exc
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="rpcworker-metrics", daemon=True
        )

    def start(self) -> Endpoint:
        self._thread.start()
        LOG.info(
            "Metrics and health endpoint on http://%s:%d/metrics",
            self.server.server_address[0],
            self.port,
        )
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _verdict(v: Verdict) -> tuple[int, str, bytes]:
    ok, reason = v
    return (200 if ok else 503), "text/plain; charset=utf-8", (reason + "\n").encode()


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            code, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            try:
                code, ctype, body = route()
            except Exception as exc:  # never take the endpoint down
                code, ctype, body = 500, "text/plain; charset=utf-8", f"{exc}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        LOG.debug("metrics endpoint: " + format, *args)


def serve_process(
    address: tuple[str, int], registry: CollectorRegistry, probe: LoopProbe, worker: Any
) -> Endpoint:
    """The endpoint of a single process (``workers = 1``). Raises ConfigError."""

    def health() -> Verdict:
        unable = worker.unable()
        if unable:
            return False, unable
        ok, reason = probe.health()
        saturated = worker.saturated
        return ok, f"{reason}; {saturated}" if saturated else reason

    return Endpoint(
        address,
        lambda: prometheus_client.generate_latest(registry),
        health,
        lambda: probe.readiness(bool(worker.ready)),
    ).start()


# -- workers > 1: multiprocess mode -------------------------------------------------------


def enable_multiprocess() -> str:
    """In the supervisor, before forking: a private directory for the workers' values,
    in the environment the workers inherit. Returns its path (``disable_multiprocess``)."""
    path = tempfile.mkdtemp(prefix="rpcworker-metrics-")
    os.environ[MULTIPROC_ENV] = path
    # prometheus_client picks its value class once, when first imported
    # (prometheus_client/values.py: ValueClass = get_value_class()), from the environment
    # variable, and has no public call to pick again: the supervisor imported it long
    # before it forks its workers
    values.ValueClass = values.get_value_class()
    return path


def disable_multiprocess(path: str) -> None:
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.get_value_class()
    shutil.rmtree(path, ignore_errors=True)


def mark_dead(path: str, pid: int) -> None:
    """A worker process exited: drop its live gauges (its counters stay in the sums)."""
    try:
        multiprocess.mark_process_dead(pid, path)
    except Exception as exc:
        LOG.debug("metrics: could not mark pid %d dead: %s", pid, exc)


def serve_supervisor(
    address: tuple[str, int],
    path: str,
    health: Callable[[], Verdict],
    ready: Callable[[], Verdict],
    own: Sequence[Collector] = (),
) -> Endpoint:
    """The endpoint of the supervisor: the workers' values summed, and the collectors of
    its ``own``. Raises ConfigError."""

    def collect() -> bytes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        for collector in own:
            registry.register(collector)
        return prometheus_client.generate_latest(registry)

    return Endpoint(address, collect, health, ready).start()
