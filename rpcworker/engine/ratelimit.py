"""Rate limit for a log line that a flood of messages could repeat without end.

``LogLimiter`` lets at most ``burst`` lines per key (a binding name) through in
each window of ``interval`` seconds and counts the rest. Once a window is over,
``expired()`` hands back what it held back, for one summary line, and the key
starts afresh. No timers: the caller asks before logging the next event and
from a tick it already has (the consumer loop's heartbeat check); nothing held
back is lost or reported twice, whatever the order of the calls. The caller
counts the events themselves (stats) on its own: this only decides about lines.

Not thread-safe: the consumer loop is its only user.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

#: lines let through per key and window
DEFAULT_BURST = 10
#: seconds per window
DEFAULT_INTERVAL = 10.0


@dataclasses.dataclass(frozen=True)
class Suppressed:
    """The lines held back for ``key`` in one window that is over."""

    key: str
    count: int
    last_reason: str
    interval: float


@dataclasses.dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0
    last_reason: str = ""


class LogLimiter:
    """At most ``burst`` lines per key in each ``interval`` s; the rest are counted.

    ``clock`` returns seconds (``time.monotonic`` by default; a test passes its own).
    """

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be >= 1 and interval > 0")
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._closed: list[Suppressed] = []

    def admit(self, key: str, reason: str) -> bool:
        """Whether the line for this event of ``key`` may be logged now; if not, it is
        counted (with ``reason``, the last one is kept for the summary)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.interval:
            self._close(key)
            window = self._windows[key] = _Window(start=now)
        if window.logged < self.burst:
            window.logged += 1
            return True
        window.suppressed += 1
        window.last_reason = reason
        return False

    def expired(self) -> list[Suppressed]:
        """What the windows that are over held back (only those that held back lines).
        Each line held back is reported once, here or by ``pending()``."""
        now = self._clock()
        for key in [k for k, w in self._windows.items() if now - w.start >= self.interval]:
            self._close(key)
        return self._take_closed()

    def pending(self) -> list[Suppressed]:
        """What every window holds back so far, over or not, closing them all (at stop)."""
        for key in list(self._windows):
            self._close(key)
        return self._take_closed()

    def _close(self, key: str) -> None:
        window = self._windows.pop(key, None)
        if window is not None and window.suppressed:
            self._closed.append(
                Suppressed(key, window.suppressed, window.last_reason, self.interval)
            )

    def _take_closed(self) -> list[Suppressed]:
        closed, self._closed = self._closed, []
        return closed
