"""A graceful stop, in order: cancel the consumers, let the handlers in flight finish and
the copies be confirmed (up to ``graceful_shutdown_timeout``), then end the loop; a
second stop signal ends it at once. Deliveries still running are left unacknowledged:
the broker redelivers them. Loop thread only.
"""

from __future__ import annotations

import time

from oslo_config import cfg
from oslo_log import log as logging

from rpcworker.engine.inflight import Inflight
from rpcworker.engine.intake import Intake
from rpcworker.engine.readiness import Notifier
from rpcworker.engine.settle import Settle
from rpcworker.engine.subscriptions import Subscriptions

LOG = logging.getLogger(__name__)


class Drain:
    def __init__(
        self,
        conf: cfg.ConfigOpts,
        inflight: Inflight,
        intake: Intake,
        subscriptions: Subscriptions,
        notifier: Notifier,
    ) -> None:
        self.timeout = conf.graceful_shutdown_timeout
        self.inflight = inflight
        self.intake = intake
        self.subscriptions = subscriptions
        self.notifier = notifier
        #: a second stop signal: do not wait for running handlers
        self.immediate = False
        #: the stop makes way for a fresh process (``rpcworker.engine.recycling``): why
        self.recycling: str | None = None
        self._deadline: float | None = None

    def recycle(self, reason: str) -> None:
        """The stop to come makes way for a fresh process (``rpcworker.engine.recycling``)."""
        LOG.warning(
            "Recycling this worker process: %s. It takes no new message, lets "
            "those in flight finish (up to %s s), then a fresh process takes its "
            "place",
            reason,
            self.timeout,
        )
        self.recycling = reason

    def unable(self) -> str | None:
        """Why the worker cannot take work now (it is recycling), or None."""
        return f"recycling: {self.recycling}" if self.recycling is not None else None

    def step(self, settle: Settle, wait: float) -> float | None:
        """One turn of the stop: the longest wait until the next, None when it is over."""
        if self._deadline is None:
            self._begin()
        assert self._deadline is not None
        busy = self.inflight.busy
        if busy <= 0 and settle.pending == 0:
            LOG.info("All in-flight messages handled")
            return None
        if self.immediate or time.monotonic() >= self._deadline:
            settle.flush()
            LOG.warning(
                "%s with %d handler(s) still running; their messages stay "
                "unacknowledged and the broker will redeliver them",
                "Second stop signal"
                if self.immediate
                else f"graceful_shutdown_timeout ({self.timeout} s) reached",
                busy,
            )
            return None
        return min(wait, max(0.0, self._deadline - time.monotonic()))

    def _begin(self) -> None:
        self.intake.draining = True
        self._deadline = time.monotonic() + self.timeout
        self.subscriptions.cancel()
        busy = self.inflight.busy
        LOG.info(
            "%s: consumers cancelled; waiting up to %s s for %d in-flight handler(s)",
            "Recycling" if self.recycling else "Stopping",
            self.timeout,
            busy,
        )
        if self.recycling is not None:  # the service goes on: no STOPPING=1 to systemd
            self.notifier.status(
                f"recycling ({self.recycling}): draining {busy} in-flight message(s)"
            )
        else:
            self.notifier.stopping(f"draining {busy} in-flight message(s)")
            self.notifier.extend_timeout(self.timeout + 10)
        self.intake.teller.summarise(final=True)
