"""systemd service notifications (sd_notify). Never raises.

The interface the consumer loop calls; ``NullNotifier`` when not run by systemd.
"""

from __future__ import annotations

from typing import Protocol


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
