"""Handler thread pool and the completion queue that wakes the consumer loop.

Never imports kombu: handler threads only ever see plain values. Each finished
job is appended to a deque and a byte is written to a pipe that the loop
``select()``s on beside the broker socket, so a completion is picked up at once
(no polling) and only the loop thread acks and publishes.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class Executor:
    def __init__(self, size: int) -> None:
        # plain threads on a SimpleQueue: cheaper per job than ThreadPoolExecutor's futures
        self._jobs: queue.SimpleQueue[tuple[int, Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._done: collections.deque[tuple[int, Any]] = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._wake_pending = False
        #: jobs submitted and not yet returned by ``completed()`` (loop thread only)
        self.pending = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"rpcworker-handler-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def fileno(self) -> int:
        """The read end of the wake-up pipe, for select()."""
        return self._rfd

    def submit(self, token: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a handler thread; its result comes back from completed()."""
        self.pending += 1
        self._jobs.put((token, fn, args))

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            token, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:  # the dispatcher never raises; belt and braces
                LOG.exception("job %s raised", token)
                result = exc
            self._done.append((token, result))
            if not self._wake_pending:
                self._wake_pending = True
                self.wake()

    def wake(self) -> None:
        """Wake the loop (safe from any thread and from a signal handler)."""
        try:
            os.write(self._wfd, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is waking anyway

    def completed(self) -> list[tuple[int, Any]]:
        """Every finished (token, result) so far. Loop thread only."""
        # Empty the pipe, THEN clear the flag, then empty the deque. A job finishing
        # meanwhile is either popped below or sees the flag cleared and writes a byte
        # that is still in the pipe for the next select(). (Clearing the flag before
        # emptying the pipe could swallow that byte and leave the flag set: a lost
        # wake-up, and acks waiting for the select() timeout.)
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        self._wake_pending = False
        done = []
        pop = self._done.popleft
        while self._done:
            done.append(pop())
        self.pending -= len(done)
        return done

    def shutdown(self, wait: bool) -> None:
        """Stop the threads once they finish their current job (``wait``: join them).

        The threads are daemon threads: a handler still stuck at exit does not keep the
        process alive."""
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
