"""``workers`` > 1: N worker processes under one cotyledon supervisor.

The supervisor (the main process) forks ``conf.workers`` children with cotyledon
and restarts any that dies. Each child builds its own ``Worker`` (plugins are
instantiated once per worker process) and runs its consume loop; SIGTERM (and
SIGINT) to the supervisor reaches every child as SIGTERM, which drains as the
single process does; SIGHUP reaches every child as SIGHUP (reload).

systemd talks to the supervisor only (``NotifyAccess=main``). A child's
``Worker`` is given a ``ChildNotifier``: each notification (ready, status,
watchdog, stopping, reloading) becomes one datagram on an ``AF_UNIX`` socketpair
created before forking (never blocking, dropped when the supervisor lags). In
the supervisor a thread feeds them to a ``Hub``, which decides what systemd is
told: READY=1 once every worker consumes (and again after RELOADING=1 once every
worker has reloaded), a ``STATUS=N/N workers consuming: ...`` line, and
WATCHDOG=1 only while every live worker's consume loop has reported within the
watchdog interval.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import multiprocessing
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import cotyledon
from cotyledon import types as cotyledon_types
from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.amqp import broker
from rpcworker.config import bindingconf
from rpcworker.daemon import endpoints, lotdepth, service, systemd
from rpcworker.engine import recycling
from rpcworker.engine.readiness import Notifier
from rpcworker.engine.worker import Worker
from rpcworker.errors import ConfigError, PluginError

LOG = logging.getLogger(__name__)

#: what systemd puts in the environment of the main process; children must not use it
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: seconds added to graceful_shutdown_timeout for cotyledon's own (last resort) timers,
#: and for EXTEND_TIMEOUT_USEC, so that the worker's drain deadline acts first
STOP_MARGIN = 10

_MAX_DATAGRAM = 65536

# event kinds, child -> supervisor
HELLO = "hello"
READY = "ready"
STATUS = "status"
#: a worker's exit status for a configuration the broker refuses (as the daemon's)
CONFIG_EXIT = 2
WATCHDOG = "watchdog"
STOPPING = "stopping"
EXTEND = "extend"
RELOADING = "reloading"
_KINDS = frozenset({HELLO, READY, STATUS, WATCHDOG, STOPPING, EXTEND, RELOADING})


# -- the child's side --------------------------------------------------------------------


class ChildNotifier:
    """The ``Notifier`` of a worker process: forwards every event to the supervisor.

    ``sock``: the child's end of the socketpair. ``watchdog_every``: seconds between
    forwarded watchdog events (``None``: the supervisor has no watchdog). ``consuming``
    is set to a callable telling whether the worker consumes on every binding; it is
    sent along with each event. Never raises, never blocks: a datagram that does not
    fit (EAGAIN) is dropped.
    """

    def __init__(
        self,
        sock: socket.socket,
        worker_id: int,
        watchdog_every: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sock = sock
        self.worker_id = worker_id
        self.pid = os.getpid()
        self.consuming: Callable[[], bool] = lambda: False
        #: why the worker cannot take work now (None: it can), sent with each event
        self.unable: Callable[[], str | None] = lambda: None
        #: the bindings whose deliveries wait for a thread (None: none), sent likewise
        self.saturated: Callable[[], str | None] = lambda: None
        self._every = watchdog_every if watchdog_every and watchdog_every > 0 else None
        self._clock = clock
        self._next_watchdog: float | None = None
        self.dropped = 0
        self._warned = False

    def hello(self) -> None:
        """A new worker process: the supervisor counts it as fresh for one interval."""
        self._send(HELLO)

    def ready(self, status: str) -> None:
        self._send(READY, status)

    def status(self, status: str) -> None:
        self._send(STATUS, status)

    def watchdog(self) -> None:
        try:
            if self._every is None:
                return
            now = self._clock()
            if self._next_watchdog is not None and now < self._next_watchdog:
                return
            self._next_watchdog = now + self._every
            self._send(WATCHDOG)
        except Exception:
            pass

    def stopping(self, status: str) -> None:
        self._send(STOPPING, status)

    def extend_timeout(self, seconds: float) -> None:
        self._send(EXTEND, str(seconds))

    def reloading(self) -> None:
        self._send(RELOADING)

    def _send(self, kind: str, text: str = "") -> None:
        try:
            try:
                consuming, unable = bool(self.consuming()), self.unable()
                saturated = self.saturated()
            except Exception:
                consuming, unable, saturated = False, None, None
            data = json.dumps(
                {
                    "w": self.worker_id,
                    "p": self.pid,
                    "e": kind,
                    "c": consuming,
                    "u": unable,
                    "s": saturated,
                    "t": str(text),
                }
            ).encode("utf-8", "replace")
            self._sock.send(data[:_MAX_DATAGRAM], socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.dropped += 1  # the supervisor lags: never wait for it
        except Exception as exc:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                with contextlib.suppress(Exception):
                    LOG.warning(
                        "worker %d: cannot forward %s to the supervisor: %s",
                        self.worker_id,
                        kind,
                        exc,
                    )


class WorkerService(cotyledon.Service):
    """One worker process: a ``Worker`` built here, in the child, from the parent's conf."""

    name = "rpcworker"

    def __init__(
        self,
        worker_id: int,
        conf: cfg.ConfigOpts,
        outbox: socket.socket,
        inbox: socket.socket,
        watchdog_every: float | None,
        listener: socket.socket | None = None,
        recycle_turn: recycling.RecycleLock | None = None,
    ) -> None:
        super().__init__(cotyledon_types.WorkerId(worker_id))
        if listener is not None:  # the supervisor's metrics endpoint: not ours to hold
            with contextlib.suppress(OSError):
                listener.close()
        # Ctrl-C in a terminal reaches the whole process group: only the supervisor
        # acts on it (gracefully), and stops the children with SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for name in SYSTEMD_ENV:  # systemd hears the supervisor only (NotifyAccess=main)
            os.environ.pop(name, None)
        with contextlib.suppress(OSError):
            inbox.close()
        self.notifier = ChildNotifier(outbox, worker_id, watchdog_every)
        self.notifier.hello()
        self._done = threading.Event()
        self._stopping = False
        try:
            self.worker: Worker = service.build(
                conf,
                notifier=self.notifier,
                serve_metrics=False,
                may_recycle=recycle_turn,
                worker_index=worker_id,
            )
        except (ConfigError, PluginError) as exc:
            LOG.error("worker %d (pid %d) cannot start: %s", worker_id, os.getpid(), exc)
            sys.exit(CONFIG_EXIT)
        self.notifier.consuming = lambda: self.worker.ready
        self.notifier.unable = self.worker.unable
        self.notifier.saturated = lambda: self.worker.saturated

    def run(self) -> None:
        try:
            self.worker.run()
        except ConfigError as exc:  # the broker refuses what the configuration declares
            LOG.error("worker %d (pid %d) stops: %s", self.worker_id, os.getpid(), exc)
            raise SystemExit(CONFIG_EXIT) from None
        finally:
            self.worker.executor.shutdown(wait=False)
            self._done.set()
        if self.worker.drain.recycling is not None and not self._stopping:
            LOG.info(
                "worker %d (pid %d) recycled (%s); the supervisor starts a fresh one",
                self.worker_id,
                os.getpid(),
                self.worker.drain.recycling,
            )
            raise SystemExit(recycling.RECYCLE_EXIT)
        if not self._stopping:  # cannot happen; restart rather than idle
            LOG.error(
                "worker %d: the consume loop returned unasked; exiting to be restarted",
                self.worker_id,
            )
            raise SystemExit(1)

    def terminate(self) -> None:
        """SIGTERM: drain as the single process does; cotyledon exits 0 when this returns
        (handler threads still running after graceful_shutdown_timeout are abandoned:
        their deliveries were left unacknowledged and are redelivered)."""
        self._stopping = True
        self.worker.request_stop()
        self._done.wait()
        LOG.info("worker %d (pid %d) stopped", self.worker_id, os.getpid())

    def reload(self) -> None:
        self.worker.request_reload()


# -- the supervisor's side ---------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    """What the supervisor knows of one live worker process."""

    pid: int
    last_watchdog: float
    consuming: bool = False
    status: str = ""
    #: has answered the last supervisor reload (RELOADING=1), or started after it
    reloaded: bool = True
    #: has reported ready since ``reloaded`` became true
    ready: bool = False
    stopping: bool = False
    stale: bool = False
    #: why the worker cannot take work now (recycling), or None
    unable: str | None = None
    #: the worker's bindings whose deliveries wait for a thread, or None
    saturated: str | None = None


class Hub:
    """Turns the workers' events into the supervisor's systemd notifications.

    Pure logic with an injected clock: ``on_event()`` for each datagram (``handle()``
    decodes one), ``on_dead()`` when cotyledon reaps a worker, ``on_reload()`` on
    SIGHUP, ``on_stop()`` on SIGTERM, ``tick()`` often (WATCHDOG=1 goes to ``sink``,
    whose own rate limit spaces it WATCHDOG_USEC/2 apart). Thread-safe. ``alive(pid)``
    tells whether a process exists (for tests).
    """

    def __init__(
        self,
        workers: int,
        sink: Notifier,
        watchdog_usec: int | None = None,
        extend_seconds: float = 60 + STOP_MARGIN,
        clock: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] | None = None,
    ) -> None:
        self.workers = workers
        self._alive = alive or _pid_exists
        self.sink = sink
        self.window = watchdog_usec / 1e6 if watchdog_usec and watchdog_usec > 0 else None
        self.extend_seconds = extend_seconds
        self._clock = clock
        self._lock = threading.RLock()
        self._slots: dict[int, _Slot] = {}
        self._dead: collections.deque[int] = collections.deque(maxlen=1024)
        self._ready_pending = True  # READY=1 at start, and after each RELOADING=1
        self._stopping = False
        #: a worker exited with CONFIG_EXIT: the supervisor stops, with that status
        self.fatal: int | None = None
        #: shared with the worker processes: how many consume now (see RecycleLock)
        self.consuming_now: Any = None
        self._last_status: str | None = None

    # -- inputs ----------------------------------------------------------------------

    def handle(self, data: bytes) -> None:
        """One datagram from a child; malformed ones are ignored."""
        try:
            msg = json.loads(data)
            worker_id, pid, kind = int(msg["w"]), int(msg["p"]), str(msg["e"])
            consuming, text = bool(msg.get("c")), str(msg.get("t", ""))
            unable, saturated = msg.get("u"), msg.get("s")
        except Exception:
            LOG.debug("ignoring a malformed worker notification: %r", data[:200])
            return
        if kind in _KINDS:
            self.on_event(
                worker_id,
                pid,
                kind,
                consuming,
                text,
                str(unable) if unable else None,
                str(saturated) if saturated else None,
            )

    def on_event(
        self,
        worker_id: int,
        pid: int,
        kind: str,
        consuming: bool = False,
        text: str = "",
        unable: str | None = None,
        saturated: str | None = None,
    ) -> None:
        with self._lock:
            if pid in self._dead:
                if kind != HELLO or not self._alive(pid):
                    return  # sent by a process already reaped: stale
                self._dead.remove(pid)  # a new worker that got a recycled pid
            now = self._clock()
            slot = self._slots.get(worker_id)
            if slot is None or slot.pid != pid:
                if slot is not None:  # replaced before its death was reported
                    self._dead.append(slot.pid)
                slot = self._slots[worker_id] = _Slot(pid=pid, last_watchdog=now)
            if kind == WATCHDOG:
                slot.last_watchdog = now
            elif kind == READY:
                slot.ready = slot.reloaded
            elif kind == RELOADING:
                slot.reloaded = True
                slot.ready = False
            elif kind == STOPPING:
                slot.stopping = True
            if kind in (READY, STATUS, STOPPING) and text:
                slot.status = text
            slot.consuming = consuming and not slot.stopping
            slot.unable = unable
            slot.saturated = saturated
            self._publish()

    def on_dead(self, worker_id: int, exit_code: int | None = None) -> None:
        with self._lock:
            slot = self._slots.pop(worker_id, None)
            if slot is not None:
                self._dead.append(slot.pid)
            if self._stopping:
                pass
            elif exit_code == CONFIG_EXIT:
                LOG.error(
                    "worker %d%s cannot run this configuration (exit status %d): stopping",
                    worker_id,
                    f" (pid {slot.pid})" if slot else "",
                    exit_code,
                )
                self.fatal = CONFIG_EXIT
            elif exit_code == recycling.RECYCLE_EXIT:
                LOG.info(
                    "worker %d%s recycled itself; a fresh one starts",
                    worker_id,
                    f" (pid {slot.pid})" if slot else "",
                )
            else:
                how = (
                    f"killed by signal {-exit_code}"
                    if exit_code is not None and exit_code < 0
                    else f"exit status {exit_code}"
                )
                LOG.warning(
                    "worker %d%s died (%s); it is restarted",
                    worker_id,
                    f" (pid {slot.pid})" if slot else "",
                    how,
                )
            self._publish()

    def on_reload(self) -> None:
        """SIGHUP: RELOADING=1; READY=1 follows once every worker has reloaded."""
        with self._lock:
            self.sink.reloading()
            self._ready_pending = True
            for slot in self._slots.values():
                slot.reloaded = False
                slot.ready = False

    def on_stop(self) -> None:
        """SIGTERM/SIGINT, before the children are told: STOPPING=1, EXTEND_TIMEOUT_USEC."""
        with self._lock:
            self._stopping = True
            line = self.status_line()
            self.sink.stopping(line)
            self._last_status = line
            self.sink.extend_timeout(self.extend_seconds)

    def tick(self) -> None:
        """WATCHDOG=1 if every live worker's loop reported within the interval."""
        with self._lock:
            gone = [w for w, slot in self._slots.items() if not self._alive(slot.pid)]
            for worker_id in gone:  # its death was not reported: forget it
                self._dead.append(self._slots.pop(worker_id).pid)
            if gone:
                self._publish()
            if self.window is None:
                return
            now = self._clock()
            healthy = True
            for worker_id, slot in self._slots.items():
                silent = now - slot.last_watchdog
                if silent > self.window:
                    healthy = False
                    if not slot.stale:
                        slot.stale = True
                        LOG.warning(
                            "worker %d (pid %d): no sign of life from its consume loop "
                            "for %.1f s; WATCHDOG=1 is withheld",
                            worker_id,
                            slot.pid,
                            silent,
                        )
                elif slot.stale:
                    slot.stale = False
                    LOG.info("worker %d (pid %d): consume loop alive again", worker_id, slot.pid)
            if healthy:
                self.sink.watchdog()

    # -- outputs ---------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [s.pid for s in self._slots.values()]

    def pid_of(self, worker_id: int) -> int | None:
        with self._lock:
            slot = self._slots.get(worker_id)
            return slot.pid if slot is not None else None

    def health(self, stale_after: float) -> tuple[bool, str]:
        """/healthz: every live worker's consume loop reported within ``stale_after``."""
        with self._lock:
            now = self._clock()
            silent = [
                f"worker {w} (pid {s.pid}) silent for {now - s.last_watchdog:.0f} s"
                for w, s in sorted(self._slots.items())
                if now - s.last_watchdog > stale_after
            ]
            if silent:
                return False, "consume loop stuck: " + "; ".join(silent)
            if self._slots and all(s.unable for s in self._slots.values()):
                return False, "no worker can take work: " + "; ".join(
                    f"worker {w} {s.unable}" for w, s in sorted(self._slots.items())
                )
            reason = f"{len(self._slots)} worker consume loop(s) alive"
            saturated = [
                f"worker {w}: {s.saturated}" for w, s in sorted(self._slots.items()) if s.saturated
            ]
            return True, "; ".join([reason, *saturated])

    def readiness(self) -> tuple[bool, str]:
        """/readyz: every worker connected and consuming on every binding."""
        with self._lock:
            consuming = sum(1 for s in self._slots.values() if s.consuming and not s.stopping)
            return consuming >= self.workers and not self._stopping, self.status_line()

    def status_line(self) -> str:
        with self._lock:
            slots = self._slots
            consuming = sum(1 for s in slots.values() if s.consuming)
            head = f"{consuming}/{self.workers} workers consuming"
            if self._stopping:
                head = f"stopping; {head}"
            groups: dict[str, list[int]] = {}
            for worker_id in sorted(slots):
                groups.setdefault(slots[worker_id].status or "starting", []).append(worker_id)
            if not groups:
                detail = "starting" if not self._stopping else "draining"
            elif len(groups) == 1 and len(slots) == self.workers:
                detail = next(iter(groups))  # they all say the same
            else:
                detail = "; ".join(
                    f"worker{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}: {text}"
                    for text, ids in groups.items()
                )
            return f"{head}: {detail}"

    def _all_ready(self) -> bool:
        ok = [s for s in self._slots.values() if s.ready and s.consuming and not s.stopping]
        return len(ok) >= self.workers

    def _publish(self) -> None:
        if self.consuming_now is not None:  # the workers' turn to recycle (RecycleLock)
            self.consuming_now.value = sum(
                1 for s in self._slots.values() if s.consuming and not s.stopping
            )
        line = self.status_line()
        if self._ready_pending and not self._stopping and self._all_ready():
            self._ready_pending = False
            self._last_status = line
            LOG.info("All %d worker processes consuming", self.workers)
            self.sink.ready(line)
        elif line != self._last_status:
            self._last_status = line
            self.sink.status(line)


class _Pump(threading.Thread):
    """Reads the children's datagrams into the hub and ticks its watchdog."""

    def __init__(self, sock: socket.socket, hub: Hub) -> None:
        super().__init__(name="rpcworker-notify", daemon=True)
        self.sock = sock
        self.hub = hub
        window = hub.window
        self.interval = min(0.5, window / 8) if window else 1.0
        self.failed = False

    def run(self) -> None:
        while True:
            try:
                readable, _, _ = select.select([self.sock], [], [], self.interval)
                if readable:
                    for _ in range(1024):
                        try:
                            data = self.sock.recv(_MAX_DATAGRAM, socket.MSG_DONTWAIT)
                        except (BlockingIOError, InterruptedError):
                            break
                        self.hub.handle(data)
                self.hub.tick()
            except Exception:  # keep going: a dead pump would stop the watchdog
                if not self.failed:
                    LOG.exception("supervisor: error while reading worker notifications")
                self.failed = True
                with contextlib.suppress(Exception):
                    select.select([], [], [], self.interval)


class _Manager(cotyledon.ServiceManager):
    """cotyledon's ServiceManager with rpcworker's signal semantics.

    - SIGINT is graceful, as SIGTERM (cotyledon makes it an immediate exit).
    - SIGHUP is sent to each worker process (cotyledon sends it to the whole
      process group, which would also hit the subprocesses a handler runs).

    cotyledon (2.x, ``_service_manager.py``) routes every signal through its private
    ``_on_signal_received`` (SIGINT -> ``_fast_exit``, SIGHUP -> ``os.killpg``) and has
    no hook that changes either, so that method is overridden.
    """

    def __init__(self, on_sighup: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_sighup = on_sighup

    def _on_signal_received(self, sig: int) -> None:
        if sig == signal.SIGINT:
            LOG.info("SIGINT: graceful stop, as on SIGTERM")
            sig = signal.SIGTERM
        elif sig == signal.SIGHUP:
            try:
                self._on_sighup()
            except Exception:
                LOG.exception("supervisor: SIGHUP handling failed")
            return
        super()._on_signal_received(sig)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def run(conf: cfg.ConfigOpts) -> int:
    """Run ``conf.workers`` worker processes until SIGTERM/SIGINT; the exit status.

    The configuration and plugins are validated by the caller (``service.validate``).
    """
    sink = systemd.from_environment()
    watchdog_usec = sink.watchdog_usec if isinstance(sink, systemd.SystemdNotifier) else None
    # Before cotyledon starts: its ServiceManager.run() would send a READY=1 of its
    # own to NOTIFY_SOCKET, and the children must not see it.
    for name in SYSTEMD_ENV:
        os.environ.pop(name, None)
    hub = Hub(
        conf.workers,
        sink,
        watchdog_usec,
        extend_seconds=conf.graceful_shutdown_timeout + STOP_MARGIN,
    )
    fork = multiprocessing.get_context("fork")
    lock_dir, turn = _recycle_turns(conf, hub, fork)
    inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    outbox.setblocking(False)
    address = endpoints.listen_address(conf)
    every = _tick_every(watchdog_usec, address)
    endpoint, metrics_dir = _serve_metrics(address, hub, conf)

    def on_dead_worker(service_id: Any, worker_id: int, code: int | None) -> None:
        pid = hub.pid_of(worker_id)
        hub.on_dead(worker_id, code)
        if hub.fatal is not None:  # stop every worker, as SIGTERM does
            os.kill(os.getpid(), signal.SIGTERM)
        if metrics_dir is not None and pid is not None:
            endpoints.mark_dead(metrics_dir, pid)

    manager = _Manager(
        lambda: _reload_workers(conf, hub),
        graceful_shutdown_timeout=conf.graceful_shutdown_timeout + STOP_MARGIN,
        mp_context=fork,
    )
    manager.add(
        WorkerService,
        workers=conf.workers,
        args=(conf, outbox, inbox, every, endpoint.server.socket if endpoint else None, turn),
    )
    manager.register_hooks(on_terminate=hub.on_stop, on_dead_worker=on_dead_worker)
    LOG.info(
        "rpcworker supervisor (pid %d) starting %d worker processes", os.getpid(), conf.workers
    )
    sink.status(f"starting {conf.workers} worker processes")
    _Pump(inbox, hub).start()
    try:
        manager.run()
    except SystemExit as exc:  # cotyledon exits once every child has stopped
        code = exc.code
    else:
        code = 0
    finally:
        if endpoint is not None:
            endpoint.close()
        if metrics_dir is not None:
            endpoints.disable_multiprocess(metrics_dir)
        shutil.rmtree(lock_dir, ignore_errors=True)
    LOG.info("rpcworker stopped")
    if hub.fatal is not None:
        return hub.fatal
    return code if isinstance(code, int) else (0 if code is None else 1)


def _tick_every(watchdog_usec: int | None, address: tuple[str, int] | None) -> float | None:
    """How often the children report watchdog events: four times per interval (and at
    least once a second for /healthz)."""
    every = watchdog_usec / 4e6 if watchdog_usec else None
    if address is not None:
        every = min(every or endpoints.TICK_EVERY, endpoints.TICK_EVERY)
    return every


def _reload_workers(conf: cfg.ConfigOpts, hub: Hub) -> None:
    """SIGHUP: re-read the files here, then send SIGHUP to each worker process."""
    LOG.info("SIGHUP: reloading %d worker process(es)", len(hub.pids))
    _reread(conf)
    hub.on_reload()
    for pid in hub.pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGHUP)


def _recycle_turns(conf: cfg.ConfigOpts, hub: Hub, fork: Any) -> tuple[str, recycling.RecycleLock]:
    """The workers' turns to recycle: a lock file in a private directory (removed at the
    end), and how many workers consume, in memory the hub shares with them."""
    lock_dir = tempfile.mkdtemp(prefix="rpcworker-recycle-")
    hub.consuming_now = fork.RawValue("i", 0)
    return lock_dir, recycling.RecycleLock(
        os.path.join(lock_dir, "turn.lock"), hub.consuming_now, conf.workers
    )


def _serve_metrics(
    address: tuple[str, int] | None, hub: Hub, conf: cfg.ConfigOpts
) -> tuple[endpoints.Endpoint | None, str | None]:
    """With ``[metrics] listen``: the supervisor's endpoint, over the workers' values
    (prometheus_client's multiprocess mode, on before forking) and the parking lots'
    depth, and its directory."""
    if address is None:
        return None, None
    depth = lotdepth.ParkedDepth.for_bindings(conf, broker.settings(conf), bindingconf.parse(conf))
    metrics_dir = endpoints.enable_multiprocess()
    try:
        return endpoints.serve_supervisor(
            address,
            metrics_dir,
            lambda: hub.health(endpoints.STALE_AFTER),
            hub.readiness,
            [depth] if depth else [],
        ), metrics_dir
    except ConfigError:
        endpoints.disable_multiprocess(metrics_dir)
        raise


def _reread(conf: cfg.ConfigOpts) -> None:
    """SIGHUP in the supervisor: re-read the files, so that a worker (re)started from now
    on is built from the same configuration its siblings reload."""
    try:
        conf.mutate_config_files()
        bindingconf.parse(conf)
    except Exception as exc:
        LOG.error(
            "SIGHUP: the configuration does not validate (%s); the workers keep "
            "what they run, but a worker that restarts before it is fixed will fail "
            "to start",
            exc,
        )
