"""How one process's handler threads are shared among its bindings: the fair default.

A thread held by a stuck handler cannot be taken back, so fairness has to be decided
before a binding takes a thread, not after. Each binding gets a *limit*, the most threads
its deliveries hold at once (``Inflight.start`` keeps the rest waiting, in order):

* an explicit ``max_concurrency`` is the limit;
* otherwise the limit is the pool less what is kept back for the other bindings: half
  of a fair share each (``pool // (2 * bindings)``, at least one thread; never more than
  that binding's own explicit limit), and never below a fair share (``pool // bindings``,
  at least one thread);
* a binding alone in its process has the whole pool (no limit).

So a binding whose handlers all hang keeps at most its limit of threads stuck and every
other binding still has threads; a binding alone with work still gets most of the pool;
and since a binding's limit is never below its fair share, no delivery waits while a thread
is idle and its binding holds less than its share. Threads go to deliveries in the order
they arrive (the executor's queue), so bindings with waiting work take free threads in
turn. With more bindings than threads, a binding that hangs can still take threads the
others need: ``thread_limits_warning`` says so at start-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from rpcworker.config.bindingconf import Binding


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    """One binding's share of the pool now."""

    binding: str
    #: handlers of the binding running now
    running: int
    #: deliveries received and not yet started (waiting for a thread)
    waiting: int
    #: the most threads the binding may hold (the pool's size when it has no limit)
    limit: int

    def saturated(self, pool: int, busy: int) -> bool:
        """Deliveries wait while the binding is at its limit, or the pool is full."""
        return self.waiting > 0 and (self.running >= self.limit or busy >= pool)


def reserve(pool: int, bindings: int) -> int:
    """Threads kept back for each binding from the others: half a fair share, at least 1."""
    return max(1, pool // (2 * bindings))


def thread_limits(bindings: Sequence[Binding], pool: int) -> dict[str, int]:
    """Each binding's limit of handler threads (0: none, the whole pool)."""
    n = len(bindings)
    if n <= 1:
        return {b.name: b.max_concurrency for b in bindings}
    keep = reserve(pool, n)
    kept = {b.name: min(keep, b.max_concurrency) if b.max_concurrency else keep for b in bindings}
    total_kept = sum(kept.values())
    share = max(1, pool // n)
    limits = {}
    for b in bindings:
        if b.max_concurrency:
            limits[b.name] = b.max_concurrency
        else:
            limit = max(share, pool - (total_kept - kept[b.name]))
            limits[b.name] = 0 if limit >= pool else limit
    return limits


def describe(limits: dict[str, int], pool: int) -> str:
    """The limits for the start-up log line."""
    return ", ".join(f"{name} {limit or pool}" for name, limit in sorted(limits.items()))


def thread_limits_warning(bindings: Sequence[Binding], pool: int) -> str | None:
    """A warning when a hung binding can still starve the others (more bindings than
    threads), or None."""
    if len(bindings) > 1 and pool < len(bindings):
        return (
            f"{len(bindings)} bindings share {pool} handler thread(s) "
            f"([DEFAULT] executor_thread_pool_size): bindings whose handlers hang can "
            f"still take every thread; give the pool at least one thread per binding"
        )
    return None


def saturation(loads: Iterable[Load], pool: int, busy: int) -> str | None:
    """One line naming the bindings whose deliveries wait for a thread, or None."""
    parts = [
        f"binding {x.binding} saturated ({x.running} of {x.limit} threads "
        f"busy, {x.waiting} waiting)"
        for x in loads
        if x.saturated(pool, busy)
    ]
    return "; ".join(parts) or None
