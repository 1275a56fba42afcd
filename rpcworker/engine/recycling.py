"""When a worker process makes way for a fresh one: more handler threads stuck than
``max_stuck_threads``, ``max_messages_per_worker`` messages handled, or more resident
memory than ``max_memory_per_worker``.

A recycle is a graceful stop (no new message; those in flight finish, up to
``graceful_shutdown_timeout``) followed by a fresh process: ``workers = 1`` re-executes
itself (``reexec``: the same pid, so systemd's main PID and the metrics port stay),
``workers > 1`` exits with ``RECYCLE_EXIT`` and the supervisor starts a new one; the
processes of a supervisor recycle one at a time (``RecycleLock``). Stuck threads end
with the process.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from oslo_config import cfg

from rpcworker.engine.events import Listener
from rpcworker.engine.executor import Executor
from rpcworker.policy.outcomes import Delivery, Outcome

#: exit status of a worker process that recycled itself (EX_TEMPFAIL)
RECYCLE_EXIT = 75
#: recycles of this process so far, carried across ``reexec`` (for the metric)
RECYCLES_ENV = "RPCWORKER_RECYCLES"


class Recycler(Listener):
    """Counts what the process handled; ``due()`` says why it should recycle now."""

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        executor: Executor,
        may_recycle: Callable[[], bool] | None = None,
    ) -> None:
        self.executor = executor
        self.max_stuck = conf.max_stuck_threads
        self.max_messages = conf.max_messages_per_worker
        self.max_rss = conf.max_memory_per_worker * 1024 * 1024
        self.may_recycle = may_recycle or (lambda: True)
        self.handled = 0

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        self.handled += 1

    def due(self, check_memory: bool) -> str | None:
        """Why this process should recycle (None: it should not), once it may (a sibling
        of a supervisor may be recycling; then this one waits its turn). The memory is
        looked at only when ``check_memory`` (twice a second)."""
        reason = self._reason(check_memory)
        return reason if reason is not None and self.may_recycle() else None

    def _reason(self, check_memory: bool) -> str | None:
        stuck = self.executor.stuck
        if stuck > self.max_stuck:
            return f"{stuck} handler threads stuck (max_stuck_threads = {self.max_stuck})"
        if self.max_messages and self.handled >= self.max_messages:
            return (
                f"{self.handled} messages handled (max_messages_per_worker = {self.max_messages})"
            )
        if self.max_rss and check_memory:
            rss = rss_bytes()
            if rss > self.max_rss:
                return (
                    f"resident memory {rss / 2**20:.0f} MiB (max_memory_per_worker = "
                    f"{self.max_rss // 2**20})"
                )
        return None


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def recycles_so_far() -> int:
    try:
        return max(0, int(os.environ.get(RECYCLES_ENV, "0")))
    except ValueError:
        return 0


def reexec() -> NoReturn:
    """Replace this process (``workers = 1``) with a fresh ``rpcworker`` on the same
    command line and environment; the pid stays, every thread (stuck ones too) ends."""
    env = dict(os.environ, **{RECYCLES_ENV: str(recycles_so_far() + 1)})
    os.execve(sys.executable, [sys.executable, "-m", "rpcworker", *sys.argv[1:]], env)


class RecycleLock:
    """The turn of one worker process of a supervisor to recycle: when every worker
    consumes (``consuming``, a count in memory shared with the supervisor, which keeps it
    up to date), the exclusive lock on a file all of them share, held until the process
    exits. So one process recycles at a time, and only once the replacement of the last
    one consumes."""

    def __init__(self, path: str, consuming: Any, workers: int) -> None:
        self.path = path
        self.consuming = consuming
        self.workers = workers
        self._fd: int | None = None

    def __call__(self) -> bool:
        if self._fd is not None:
            return True
        if self.consuming.value < self.workers:
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd  # released when the process exits
        return True
