"""The in-flight byte budget of one worker process (``max_inflight_bytes``).

A body counts from the moment its delivery is received until the delivery is settled
(``Listener.settled``: its ack, reject or confirmed copy is on its way), or dropped
with its connection. Two things keep the count under the budget, both on RabbitMQ's
rules (its "Consumer Prefetch" page; measured on 3.10 for classic and quorum queues):

* **Windows.** A consumer's ``basic.qos`` (per consumer, global = false) bounds how many
  unacked deliveries the broker pushes to it, but applies only to consumers created
  after it: a running consumer keeps its window. So each consumer is given, when it
  starts consuming, a window of what the budget holds of messages of the recent
  size (``Budget.window``: its share of the whole budget), at most the binding's
  ``prefetch_count``. The recent size is the largest body of the last 5 to 10 s; until
  one is seen on a connection, a message is assumed ``max_message_size`` long. When the
  recent size moves by half or double, consumers start again with the new window
  (``Throttle``: basic.cancel, basic.qos, basic.consume).
* **Pause.** At or over the budget (a burst of large messages the windows were not made
  for), every consumer is cancelled (basic.cancel): the broker pushes nothing more, and
  what was delivered stays unacked on its channel, to be acked as usual (nothing is
  redelivered). Consuming starts again once the new windows fit in what is free (the
  deliveries of a cancelled consumer do not count in the window of the next one).

A consumer of an ``auto_delete`` queue is never cancelled (the broker would delete the
queue with its last consumer): it keeps the window it started with, and its bodies
count. A message larger than the whole budget is taken and handled alone: the check
runs after the take. Loop thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from oslo_log import log as logging

from rpcworker.engine import ratelimit
from rpcworker.engine.events import Listener
from rpcworker.policy.outcomes import Delivery, Outcome

LOG = logging.getLogger(__name__)

#: the largest window AMQP can express (basic.qos prefetch-count is a short)
MAX_WINDOW = 65535
#: seconds per generation of the size estimate: the estimate is the largest body of the
#: last one or two generations
GENERATION = 5.0
#: throttling starts and stops logged per window of this many seconds (then a summary)
LOG_INTERVAL = 30.0
MiB = 1024 * 1024


class Sizes:
    """The largest body of the recent deliveries (those of the last one or two
    generations of GENERATION seconds): the size a window is made for."""

    def __init__(self, assumed: int) -> None:
        self.assumed = assumed
        self.reset()

    def reset(self, now: float = 0.0) -> None:
        """Nothing seen (a new connection): assume the largest message."""
        self._current = self._previous = 0
        self._seen = False
        self._started = now

    def add(self, size: int) -> None:
        self._seen = True
        if size > self._current:
            self._current = size

    def age(self, now: float) -> None:
        """A generation is over after GENERATION seconds, once a delivery came in it
        (an idle worker keeps what it saw last)."""
        if now - self._started >= GENERATION and self._current:
            self._previous, self._current, self._started = self._current, 0, now

    @property
    def estimate(self) -> int:
        seen = max(self._current, self._previous)
        return seen if self._seen else self.assumed


class Budget(Listener):
    """Bytes of bodies in flight in this process, against ``limit`` (0: no budget)."""

    def __init__(self, limit: int, max_message_size: int) -> None:
        self.limit = limit
        self.held = 0
        self.sizes = Sizes(max_message_size)

    @property
    def over(self) -> bool:
        return bool(self.limit) and self.held >= self.limit

    def take(self, size: int) -> None:
        """A body of ``size`` bytes was received."""
        self.held += size
        self.sizes.add(size)

    def release(self, size: int) -> None:
        self.held = max(0, self.held - size)

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        self.release(delivery.size)

    def window(self, prefetch: int, consumers: int) -> int | None:
        """The window of each of ``consumers`` consumers: its share of the budget in
        messages of the recent size, at least 1, at most ``prefetch`` (0: no limit but
        the budget's). None: no window at all (no budget, no prefetch)."""
        if not self.limit:
            return prefetch or None
        fits = self.limit // (max(1, consumers) * max(1, self.sizes.estimate))
        return max(1, min(fits, prefetch or MAX_WINDOW, MAX_WINDOW))


class Consumers(Protocol):
    """What the throttle needs of the subscriptions (``Subscriptions`` has it)."""

    def pause(self) -> int:
        """Cancel every consumer that may be cancelled; how many were."""

    def resume(self) -> None:
        """Consume again, each consumer with a fresh window."""

    def slots(self) -> int:
        """Deliveries the windows ``resume`` would give take in all."""

    def rewindow(self) -> int:
        """Start again the consumers whose window is off by a factor of two; how many."""


class Throttle:
    """Pauses and resumes consuming by the budget, and keeps windows to the recent size.
    ``step()`` runs once per loop turn (never inside a delivery's callback: cancelling
    waits for the broker's answer, during which further deliveries come in)."""

    def __init__(
        self, budget: Budget, consumers: Consumers, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget
        self.consumers = consumers
        self._clock = clock
        #: when the current pause began (None: consuming)
        self.paused_since: float | None = None
        #: seconds paused in all, before the current pause
        self.throttled = 0.0
        self._estimate = 0  # the size the windows were last made for
        self._limiter = ratelimit.LogLimiter(burst=2, interval=LOG_INTERVAL, clock=clock)
        self._logged_start = False

    @property
    def seconds_throttled(self) -> float:
        since = self.paused_since
        return self.throttled + (self._clock() - since if since is not None else 0.0)

    def connected(self) -> None:
        """A new connection: its consumers start with windows for the largest message."""
        self.budget.sizes.reset(self._clock())
        self._estimate = self.budget.sizes.estimate

    def disconnected(self, still_held: int) -> None:
        """The connection is gone, with every delivery not settled but those whose
        handler still runs (``still_held`` bytes, released as they are dropped)."""
        self.budget.held = still_held
        if self.paused_since is not None:
            self._stopped("the connection was lost")

    def step(self) -> None:
        budget = self.budget
        if not budget.limit:
            return
        if self.paused_since is None:
            if budget.over:
                self._pause()
            elif budget.sizes.estimate != self._estimate:
                # the recent size moved (it falls at most once a GENERATION): consumers
                # whose window is off by a factor of two start again
                self._estimate = budget.sizes.estimate
                self.consumers.rewindow()
        elif (
            budget.held + self.consumers.slots() * budget.sizes.estimate <= budget.limit
            or not budget.held
        ):
            self.consumers.resume()
            self._estimate = budget.sizes.estimate
            self._stopped(f"{_mib(budget.held)} in flight")

    def tick(self) -> None:
        """Twice a second: the size estimate ages, held-back log lines are summarised."""
        self.budget.sizes.age(self._clock())
        for s in self._limiter.expired():
            LOG.info(
                "Throttled %d more time(s) in the last %g s (%.1f s throttled since start)",
                s.count,
                s.interval,
                self.seconds_throttled,
            )

    def _pause(self) -> None:
        cancelled = self.consumers.pause()
        self.paused_since = self._clock()
        b = self.budget
        self._logged_start = self._limiter.admit("throttle", "")
        if self._logged_start:
            LOG.info(
                "Throttling: %s of message bodies in flight, max_inflight_bytes is %s; "
                "%d consumer(s) cancelled until enough of it is settled",
                _mib(b.held),
                _mib(b.limit),
                cancelled,
            )

    def _stopped(self, why: str) -> None:
        since, self.paused_since = self.paused_since, None
        assert since is not None
        spent = self._clock() - since
        self.throttled += spent
        if self._logged_start:
            LOG.info("Throttling over after %.1f s (%s)", spent, why)


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"
