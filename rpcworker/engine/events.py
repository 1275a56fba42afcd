"""What the engine tells its observers, once per event: ``Listener``.

The loop calls one ``Listeners`` object; the metrics (``daemon.instruments.Metrics``, a
``Recorder``: a listener that also times each handler run), the plain counters
(``Stats``), the byte budget, the recycler and the plugin author's test kit
(``testing.HandlerFixture``) each listen. ``settled(delivery, outcome)`` comes once per
delivery, when the worker is done with it: its ack, reject, confirmed copy and reply are
on their way, and ``outcome`` is what was carried out (after ``decisions.resolve`` and a
refused copy). Loop thread only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

from rpcworker.engine.shares import Load
from rpcworker.policy.outcomes import Action, Delivery, Outcome


class Listener:
    """An observer of the engine; every method does nothing here."""

    def received(self, binding: str) -> None:
        """A delivery came in (before anything is decided)."""

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        """The worker is done with ``delivery`` (see the module docstring)."""

    def consuming(self, binding: str, on: bool) -> None:
        """``binding`` has (or no longer has) its consumers on the broker."""

    def connected(self, first: bool) -> None:
        """A session with the broker began (``first``: the process's first one)."""

    def disconnected(self) -> None:
        """The session ended (lost, or a clean stop)."""


class Listeners(Listener):
    """Tells every listener of a list, in order. ``received`` and ``settled`` come once
    per delivery: they call only the listeners that do something with them."""

    def __init__(self, listeners: Iterable[Listener]) -> None:
        self.listeners = list(listeners)
        self._received = [
            x.received for x in self.listeners if type(x).received is not Listener.received
        ]
        self._settled = [
            x.settled for x in self.listeners if type(x).settled is not Listener.settled
        ]

    def received(self, binding: str) -> None:
        for received in self._received:
            received(binding)

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        for settled in self._settled:
            settled(delivery, outcome)

    def consuming(self, binding: str, on: bool) -> None:
        for listener in self.listeners:
            listener.consuming(binding, on)

    def connected(self, first: bool) -> None:
        for listener in self.listeners:
            listener.connected(first)

    def disconnected(self) -> None:
        for listener in self.listeners:
            listener.disconnected()


#: what each carried-out action counts as on the broker: (acked, rejected)
SETTLEMENT: dict[Action, tuple[bool, bool]] = {
    Action.NONE: (True, False),  # acked on receipt (acknowledge = before)
    Action.ACK: (True, False),
    Action.RETRY: (True, False),  # the copy confirmed, then the ack
    Action.DEAD_LETTER: (True, False),
    Action.COUNT: (True, False),
    Action.REJECT: (False, True),
    Action.REQUEUE: (False, True),
    Action.DROP: (False, False),
}


@dataclasses.dataclass
class Stats(Listener):
    """Plain counters of one worker (``worker.stats``), for tests and the test kit."""

    connects: int = 0
    deliveries: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    counted: int = 0

    def received(self, binding: str) -> None:
        self.deliveries += 1

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        acked, rejected = SETTLEMENT[outcome.action]
        self.acked += acked
        self.rejected += rejected
        self.retried += outcome.action is Action.RETRY
        self.dead_lettered += outcome.dead_lettered
        self.counted += outcome.action is Action.COUNT

    def connected(self, first: bool) -> None:
        self.connects += 1


class Recorder(Listener):
    """What the engine tells the metrics: its events, and each handler run."""

    def run_handler(self, binding: str, call: Callable[[], Outcome]) -> Outcome:
        """Run ``call`` (in a handler thread) and return its outcome."""
        return call()

    def threads(self, busy: int, stuck: int) -> None:
        """Handler threads in a handler now, and those of them stuck past a deadline."""

    def inflight_bytes(self, held: int, throttled_seconds: float) -> None:
        """Bytes of bodies in flight now; seconds throttled by the budget in all."""

    def loads(self, loads: Sequence[Load]) -> None:
        """Each binding's handlers running and waiting for a thread now, and its limit."""

    def recycled(self) -> None:
        """The process is recycling itself."""


class NullMetrics(Recorder):
    """No endpoint configured: records nothing."""


NULL = NullMetrics()
