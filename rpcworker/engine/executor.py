"""Handler thread pool and the completion queue that wakes the consumer loop.

Never imports kombu: handler threads only ever see plain values. Each finished
job is appended to a deque and a byte is written to a pipe that the loop
``select()``s on beside the broker socket, so a completion is picked up at once
(no polling) and only the loop thread acks and publishes.

A thread stuck in a handler cannot be killed: ``abandon(token)`` replaces it with a
fresh one, so the pool keeps its size, and the stuck thread ends once its handler
returns (``stuck`` counts those still in a handler). The process is recycled when too
many are stuck (``rpcworker.engine.recycling``).
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
        self.size = size
        # plain threads on a SimpleQueue: cheaper per job than ThreadPoolExecutor's futures
        self._jobs: queue.SimpleQueue[tuple[int, Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._done: collections.deque[tuple[int, Any]] = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._wake_pending = False
        #: jobs submitted and not yet returned by ``completed()`` (loop thread only)
        self.pending = 0
        self._lock = threading.Lock()
        self._running: dict[int, threading.Thread] = {}  # token -> the thread running it
        self._replaced: set[threading.Thread] = set()  # stuck, a fresh one took its place
        self._threads: list[threading.Thread] = []
        self._serial = 0
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        self._serial += 1
        thread = threading.Thread(
            target=self._work, name=f"rpcworker-handler-{self._serial}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    @property
    def stuck(self) -> int:
        """Threads replaced while stuck in a handler that has not returned yet."""
        return len(self._replaced)

    @property
    def busy(self) -> int:
        """Threads in a handler now, stuck ones included."""
        return len(self._running)

    def fileno(self) -> int:
        """The read end of the wake-up pipe, for select()."""
        return self._rfd

    def submit(self, token: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a handler thread; its result comes back from completed()."""
        self.pending += 1
        self._jobs.put((token, fn, args))

    def _work(self) -> None:
        get = self._jobs.get
        me = threading.current_thread()
        while True:
            job = get()
            if job is None:
                return
            token, fn, args = job
            self._running[token] = me
            try:
                result = fn(*args)
            except BaseException as exc:  # inflight.run never raises; belt and braces
                LOG.exception("job %s raised", token)
                result = exc
            # the job (its delivery, body and arguments) is not kept alive by this thread
            # while it waits for the next one
            del job, fn, args
            del self._running[token]
            replaced = False
            if self._replaced:  # the lock only when some thread was replaced
                with self._lock:
                    replaced = me in self._replaced
                    if replaced:  # a fresh thread took this one's place: the pool has its size
                        self._replaced.discard(me)
                        self._threads.remove(me)
            self._done.append((token, result))
            del result
            if not self._wake_pending:
                self._wake_pending = True
                self.wake()
            if replaced:
                return

    def abandon(self, token: int) -> bool:
        """The job ``token`` ran past its deadline: a fresh thread takes its thread's place
        (the pool keeps its size); the stuck one ends when its handler returns. False when
        the job is not running (it has just finished, or never started)."""
        with self._lock:
            thread = self._running.get(token)
            if thread is None or thread in self._replaced:
                return False
            self._replaced.add(thread)
            if self._running.get(token) is not thread:  # it returned meanwhile: not stuck
                self._replaced.discard(thread)
                return False
            self._start_thread()
        return True

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
        """Stop the threads once they finish their current job (``wait``: join them, but
        not the stuck ones).

        The threads are daemon threads: a handler still stuck at exit does not keep the
        process alive."""
        with self._lock:
            threads = [t for t in self._threads if t not in self._replaced]
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
