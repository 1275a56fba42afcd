"""Deliveries whose handler is queued or running: tokens, connection generations,
``handler_timeout`` deadlines, oslo call-monitor heartbeats, and what a handler thread
runs for each.

Loop thread only, but for ``live``, which handler threads read: work queued for a
connection that is gone is skipped, since the broker redelivers it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

from oslo_log import log as logging

from rpcworker import dispatcher, policy, protocol
from rpcworker.bindings import Binding
from rpcworker.consumer.settle import Settle
from rpcworker.dedup import CompletedCache
from rpcworker.executor import Executor
from rpcworker.metrics import Recorder
from rpcworker.policy import Action, Delivery, Outcome

LOG = logging.getLogger(__name__)

#: longest wait handed back when nothing is due
MAX_WAIT = 1.0


def run(handler: Any, binding: Binding, request: protocol.Request) -> Outcome:
    """A handler thread's whole job for one request: the call, then the policy's
    outcome for what it returned or raised. Never raises an ``Exception``."""
    try:
        result = dispatcher.call(handler, request)
    except Exception as exc:
        return policy.on_completion(binding, request, error=exc)
    return policy.on_completion(binding, request, result)


@dataclasses.dataclass(slots=True)
class _Job:
    delivery: Delivery
    generation: int
    deadline: float | None  # handler_timeout


class Inflight:
    def __init__(self, executor: Executor, completed: CompletedCache, metrics: Recorder,
                 threads: int) -> None:
        self.executor = executor
        self.completed = completed
        self.metrics = metrics
        self.threads = threads
        #: the generation of the current connection (one per session)
        self.generation = 0
        #: the generation whose connection is up (0 while disconnected): read by
        #: handler threads to skip queued work of a lost connection
        self.live = 0
        self._tokens = itertools.count(1)
        self._jobs: dict[int, _Job] = {}
        self._abandoned: set[int] = set()
        self._monitors: dict[int, float] = {}  # token -> next call-monitor heartbeat

    def connected(self) -> None:
        self.generation += 1
        self.live = self.generation
        self._monitors.clear()

    def disconnected(self) -> None:
        self.live = 0

    @property
    def busy(self) -> int:
        """Handlers queued or running, not counting those abandoned after a timeout."""
        return self.executor.pending - len(self._abandoned)

    @property
    def idle(self) -> bool:
        return not self._jobs and self.executor.pending == 0

    def holds(self, binding: Binding) -> bool:
        """Whether a delivery of ``binding`` is still in flight."""
        return any(job.delivery.binding is binding for job in self._jobs.values())

    def start(self, d: Delivery, handler: Any) -> None:
        """Queue ``d`` for a handler thread."""
        binding, request = d.binding, d.request
        assert request is not None
        token = next(self._tokens)
        deadline = (time.monotonic() + binding.handler_timeout
                    if binding.handler_timeout else None)
        self._jobs[token] = _Job(d, self.generation, deadline)
        if request.monitor_timeout:
            self._monitors[token] = time.monotonic() + request.monitor_timeout / 2
        self.executor.submit(token, self._run, self.generation, handler, binding, request)

    def _run(self, generation: int, handler: Any, binding: Binding,
             request: protocol.Request) -> Outcome | None:
        """In a handler thread: None when its connection is gone (never run)."""
        if generation != self.live:
            return None
        return self.metrics.run_handler(binding.name, lambda: run(handler, binding, request))

    def finish(self, settle: Settle | None) -> None:
        """Settle every job that came back (``settle`` None: disconnected; the policy
        drops them)."""
        done = self.executor.completed()
        for token, result in done:
            if token in self._abandoned:  # timed out earlier and already settled
                self._abandoned.discard(token)
                continue
            job = self._jobs.pop(token, None)
            self._monitors.pop(token, None)
            if job is None:
                continue
            live = settle is not None and job.generation == self.generation
            outcome = policy.on_completed(job.delivery, result, self.completed, live)
            if outcome.action is not Action.DROP:
                settle.settle(job.delivery, outcome)  # type: ignore[union-attr]

    def expire(self, now: float, settle: Settle | None) -> float:
        """Settle deliveries whose handler ran past handler_timeout; seconds to the next."""
        wait = MAX_WAIT
        for token, job in list(self._jobs.items()):
            if job.deadline is None:
                continue
            if job.deadline > now:
                wait = min(wait, job.deadline - now)
                continue
            del self._jobs[token]
            self._monitors.pop(token, None)
            self._abandoned.add(token)
            d = job.delivery
            if job.generation == self.generation and settle is not None \
                    and d.request is not None:
                settle.settle(d, policy.timed_out(d.binding, d.request))
            LOG.warning("%d handler thread(s) of %d abandoned after handler_timeout",
                        len(self._abandoned), self.threads)
        return wait

    def heartbeats(self, now: float, settle: Settle) -> float:
        """Send due oslo call-monitor heartbeats; return seconds until the next is due."""
        if not self._monitors or settle.blocked:
            return MAX_WAIT
        wait = MAX_WAIT
        for token, due in list(self._monitors.items()):
            job = self._jobs.get(token)
            request = job.delivery.request if job is not None else None
            if request is None or request.reply is None or request.monitor_timeout is None:
                del self._monitors[token]
                continue
            if due <= now:
                settle.reply(protocol.encode_heartbeat(request.reply))
                due = now + request.monitor_timeout / 2
                self._monitors[token] = due
            wait = min(wait, due - now)
        return max(0.0, wait)
