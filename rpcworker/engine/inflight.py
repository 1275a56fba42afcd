"""Deliveries whose handler is waiting or running: tokens, connection generations,
per-binding thread limits, ``handler_timeout`` deadlines, oslo call-monitor heartbeats, and
what a handler thread runs for each.

* A binding never holds more than its limit of handler threads (``shares``: its
  ``max_concurrency``, or the fair default when it has none; no limit when it is alone):
  its further deliveries wait here, in order, and a stuck or slow binding cannot starve
  the others.
* A deadline counts from the moment the handler *starts* (the handler thread stamps
  the job), never from receipt: waiting for a thread is not a failure. Past it, the
  delivery is settled as timed out and the stuck thread is replaced
  (``Executor.abandon``); an ``async def`` handler is cancelled by its own thread
  instead (``aio.wait``).

Loop thread only, but for ``live`` and the jobs' ``started`` / ``cancellable``, which
handler threads write: work queued for a connection that is gone is skipped, since the
broker redelivers it.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging

from rpcworker.config.bindingconf import Binding
from rpcworker.engine import aio
from rpcworker.engine.events import Recorder
from rpcworker.engine.executor import Executor
from rpcworker.engine.settle import Settle
from rpcworker.engine.shares import Load, saturation, thread_limits
from rpcworker.engine.telling import Teller
from rpcworker.policy import decisions, dispatcher
from rpcworker.policy.dedup import CompletedCache
from rpcworker.policy.outcomes import Action, Delivery, Outcome
from rpcworker.wire import decoding, replyformat

LOG = logging.getLogger(__name__)

#: longest wait handed back when nothing is due
MAX_WAIT = 1.0


@dataclasses.dataclass(slots=True)
class _Job:
    delivery: Delivery
    handler: Any
    generation: int
    #: when the handler started (stamped by its thread; None while it waits)
    started: float | None = None
    #: an async handler: its thread cancels it at the deadline (the loop does not)
    cancellable: bool = False


def run(
    handler: Any, binding: Binding, request: decoding.Request, job: _Job | None = None
) -> Outcome:
    """A handler thread's whole job for one request: the call (an awaitable result is
    awaited on the event loop, with what is left of the deadline), then the policy's
    outcome for what it returned or raised. Never raises an ``Exception``."""
    try:
        result = dispatcher.call(handler, request)
        if hasattr(type(result), "__await__"):  # a coroutine (async def), or any awaitable
            if job is not None:
                job.cancellable = True
            result = aio.wait(result, _time_left(binding, job))
    except Exception as exc:
        return decisions.on_completion(binding, request, error=exc)
    return decisions.on_completion(binding, request, result)


def _time_left(binding: Binding, job: _Job | None) -> float | None:
    if not binding.handler_timeout:
        return None
    started = job.started if job is not None and job.started is not None else None
    spent = time.monotonic() - started if started is not None else 0.0
    return binding.handler_timeout - spent


class Inflight:
    def __init__(
        self,
        executor: Executor,
        completed: CompletedCache,
        metrics: Recorder,
        threads: int,
        teller: Teller,
        dropped: Callable[[Delivery], None] = lambda d: None,
        unstarted: Callable[[Delivery], None] = lambda d: None,
    ) -> None:
        self.executor = executor
        self.teller = teller
        #: told of each delivery dropped unsettled with its connection (the byte budget)
        self.dropped = dropped
        #: told of each delivery dropped with its connection before a thread took it
        self.unstarted = unstarted
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
        self._running: collections.Counter[str] = collections.Counter()  # binding -> jobs
        self._waiting: dict[str, collections.deque[int]] = {}  # over their limit, in order
        #: binding -> its limit of threads (0: the whole pool; absent: its own
        #: max_concurrency); see ``share``
        self._limits: dict[str, int] = {}
        #: no deadline can pass before this (see expire); the shortest timeout seen
        self._next_scan = 0.0
        self._shortest = float("inf")

    def connected(self) -> None:
        self.generation += 1
        self.live = self.generation
        self._monitors.clear()

    def disconnected(self) -> None:
        """The connection is gone: what still waits for a thread is dropped (the broker
        redelivers it); what runs finishes, and is dropped then."""
        self.live = 0
        for tokens in self._waiting.values():
            for token in tokens:
                job = self._jobs.pop(token, None)
                if job is not None:
                    self.unstarted(job.delivery)
        self._waiting.clear()

    def share(self, bindings: list[Binding]) -> dict[str, int]:
        """Set each binding's limit of threads (``shares.thread_limits``); at start and
        after a SIGHUP changed the bindings. Returns the limits."""
        self._limits = thread_limits(bindings, self.threads)
        for name, tokens in list(self._waiting.items()):  # a raised limit: start them now
            while tokens:
                head = self._jobs.get(tokens[0])
                if head is None:
                    tokens.popleft()  # dropped with its connection
                elif self._at_limit(head.delivery.binding):
                    break
                else:
                    self._start_next(name)
        return self._limits

    def _limit_of(self, binding: Binding) -> int:
        """``binding``'s limit of threads (0: the whole pool): as ``share`` set it, else
        (a binding retiring after a SIGHUP) its own ``max_concurrency``."""
        return self._limits.get(binding.name, binding.max_concurrency)

    def _at_limit(self, binding: Binding) -> bool:
        limit = self._limit_of(binding)
        return bool(limit) and self._running[binding.name] >= limit

    def loads(self) -> list[Load]:
        """Each binding's running and waiting handlers and its limit, now (for the
        metrics and /healthz: twice a second, not per delivery)."""
        running: collections.Counter[str] = collections.Counter()
        waiting: collections.Counter[str] = collections.Counter()
        limits = dict(self._limits)
        for job in self._jobs.values():
            binding = job.delivery.binding
            limits.setdefault(binding.name, self._limit_of(binding))
            if job.started is None:
                waiting[binding.name] += 1
            else:
                running[binding.name] += 1
        return [Load(n, running[n], waiting[n], limits[n] or self.threads) for n in sorted(limits)]

    def saturation(self, loads: list[Load]) -> str | None:
        """The bindings of ``loads`` whose deliveries wait for a thread, as one line, or
        None."""
        return saturation(loads, self.threads, self.executor.busy - self.executor.stuck)

    @property
    def busy(self) -> int:
        """Handlers waiting or running, not counting those abandoned after a timeout."""
        waiting = sum(len(tokens) for tokens in self._waiting.values())
        return self.executor.pending - len(self._abandoned) + waiting

    def held_bytes(self) -> int:
        """Bytes of the bodies whose handler is still waiting or running."""
        return sum(job.delivery.size for job in self._jobs.values())

    @property
    def idle(self) -> bool:
        return not self._jobs and self.executor.pending == 0

    def holds(self, binding: Binding) -> bool:
        """Whether a delivery of ``binding`` is still in flight."""
        return any(job.delivery.binding is binding for job in self._jobs.values())

    def start(self, d: Delivery, handler: Any) -> None:
        """Hand ``d`` to a handler thread, or keep it waiting while its binding holds its
        limit of threads."""
        request = d.request
        assert request is not None
        token = next(self._tokens)
        job = self._jobs[token] = _Job(d, handler, self.generation)
        if request.monitor_timeout:
            self._monitors[token] = time.monotonic() + request.monitor_timeout / 2
        timeout = d.binding.handler_timeout
        if timeout and timeout < self._shortest:
            self._shortest = timeout
            self._next_scan = 0.0
        # under its limit (or none: the whole pool), straight to the executor's queue, so
        # that a free thread never waits for the loop to hand it the next delivery
        if self._at_limit(d.binding):
            self._waiting.setdefault(d.binding.name, collections.deque()).append(token)
            return
        self._submit(token, job)

    def _submit(self, token: int, job: _Job) -> None:
        self._running[job.delivery.binding.name] += 1
        self.executor.submit(token, self._run, job)

    def _release(self, job: _Job) -> None:
        """``job`` no longer holds one of its binding's threads: the next one waiting
        gets it."""
        name = job.delivery.binding.name
        self._running[name] -= 1
        if self._waiting.get(name):
            self._start_next(name)

    def _start_next(self, name: str) -> None:
        """The first of ``name``'s waiting deliveries still in flight gets a thread."""
        waiting = self._waiting[name]
        while waiting:
            token = waiting.popleft()
            following = self._jobs.get(token)
            if following is not None:
                self._submit(token, following)
                return

    def _run(self, job: _Job) -> Outcome | None:
        """In a handler thread: None when its connection is gone (never run)."""
        if job.generation != self.live:
            return None
        job.started = time.monotonic()
        d = job.delivery
        request = d.request
        assert request is not None
        return self.metrics.run_handler(
            d.binding.name, lambda: run(job.handler, d.binding, request, job)
        )

    def finish(self, settle: Settle | None) -> None:
        """Settle every job that came back (``settle`` None: disconnected; the policy
        drops them)."""
        for token, result in self.executor.completed():
            if token in self._abandoned:  # timed out earlier and already settled
                self._abandoned.discard(token)
                continue
            job = self._jobs.pop(token, None)
            self._monitors.pop(token, None)
            if job is None:
                continue
            self._release(job)
            live = settle is not None and job.generation == self.generation
            outcome = decisions.on_completed(job.delivery, result, self.completed, live)
            if outcome.action is Action.DROP:
                if outcome.notes:
                    self.teller.tell(job.delivery, outcome)
                self.dropped(job.delivery)
            else:
                settle.settle(job.delivery, outcome)  # type: ignore[union-attr]

    def expire(self, now: float, settle: Settle | None) -> float:
        """Settle deliveries whose handler has run past handler_timeout, and replace their
        threads; seconds to the next deadline.

        The jobs are only looked at once a deadline can have passed: the earliest one
        of the handlers started, or the shortest timeout from now for those that start
        later."""
        if now < self._next_scan:
            return min(MAX_WAIT, self._next_scan - now)
        next_scan = now + self._shortest
        for token, job in list(self._jobs.items()):
            timeout = job.delivery.binding.handler_timeout
            if job.started is None or job.cancellable or not timeout:
                continue
            deadline = job.started + timeout
            if deadline > now:
                next_scan = min(next_scan, deadline)
                continue
            del self._jobs[token]
            self._monitors.pop(token, None)
            self._abandoned.add(token)
            self._release(job)
            self.executor.abandon(token)
            d = job.delivery
            if job.generation == self.generation and settle is not None and d.request is not None:
                settle.settle(d, decisions.timed_out(d.binding, d.request))
            else:
                self.dropped(d)
            LOG.warning(
                "%d handler thread(s) stuck past handler_timeout (abandoned; a "
                "fresh thread took each one's place: %d of %d threads free)",
                self.executor.stuck,
                self.threads - self.executor.busy + self.executor.stuck,
                self.threads,
            )
        self._next_scan = next_scan
        return min(MAX_WAIT, max(0.0, next_scan - now))

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
                settle.reply(replyformat.encode_heartbeat(request.reply))
                due = now + request.monitor_timeout / 2
                self._monitors[token] = due
            wait = min(wait, due - now)
        return max(0.0, wait)
