"""What the worker tells systemd about itself: READY=1 once every binding consumes,
then a STATUS line of what is consumed, what could not be declared and how many handler
threads are stuck. ``Notifier`` is the interface it tells it through (implemented by
``daemon.systemd.SystemdNotifier``; ``NullNotifier`` when nobody listens). Loop thread
only."""

from __future__ import annotations

from typing import Protocol

from rpcworker.engine.events import Stats
from rpcworker.engine.executor import Executor
from rpcworker.engine.subscriptions import Subscriptions


class Notifier(Protocol):
    def ready(self, status: str) -> None:
        """READY=1 with a STATUS= line: every binding has a live consumer."""

    def status(self, status: str) -> None:
        """STATUS= line (bindings consumed, reconnects, ...)."""

    def watchdog(self) -> None:
        """WATCHDOG=1, called from every iteration of the consume loop (rate-limited inside)."""

    def stopping(self, status: str) -> None:
        """STOPPING=1 with a STATUS= line."""

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC= while draining."""

    def reloading(self) -> None:
        """RELOADING=1 (with MONOTONIC_USEC=) on SIGHUP."""


class NullNotifier:
    """Does nothing: not run by systemd."""

    def ready(self, status: str) -> None:
        pass

    def status(self, status: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def stopping(self, status: str) -> None:
        pass

    def extend_timeout(self, seconds: float) -> None:
        pass

    def reloading(self) -> None:
        pass


class Readiness:
    def __init__(
        self, notifier: Notifier, subscriptions: Subscriptions, stats: Stats, executor: Executor
    ) -> None:
        self.notifier = notifier
        self.subscriptions = subscriptions
        self.stats = stats
        self.executor = executor
        #: every binding consumes (read by the health endpoint and the supervisor)
        self.ready = False
        self._stuck = 0

    def announce(self, force: bool = False) -> None:
        """Log what is consumed; READY=1 once every binding consumes (again after a
        reload when ``force``), else a STATUS line naming what is missing."""
        subs = self.subscriptions
        subs.log_consuming()
        if not subs.failed and (force or not self.ready):
            self.ready = True
            self.notifier.ready(self.status())
        elif subs.failed:
            self.notifier.status(self.status())

    def status(self) -> str:
        line = self.subscriptions.status(reconnects=self.stats.connects - 1)
        stuck = self.executor.stuck
        return f"{line}; {stuck} handler thread(s) stuck" if stuck else line

    def tick(self) -> None:
        """A new STATUS line when the number of stuck threads changed."""
        stuck = self.executor.stuck
        if stuck != self._stuck:
            self._stuck = stuck
            self.notifier.status(self.status())
