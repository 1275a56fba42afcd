"""The one place where what happened to a delivery is logged.

The decisions (``policy.decisions``) return outcomes that carry ``Note``s of what
happened; ``Teller.tell`` words each note and logs it once, when the engine carries the
outcome out (``Settle.settle``) or drops it with its connection (``Inflight.finish``).
Every line names the binding and the message in one form (``wire.logfields``), with the
same ``extra`` fields (binding, method, ids) for ``use_json``. The "message refused"
lines a flood of bad messages could repeat are rate limited (``Refusals``). Loop thread
only.
"""

from __future__ import annotations

from typing import Any

from oslo_log import log as logging

from rpcworker.config.bindingconf import Binding
from rpcworker.engine import ratelimit
from rpcworker.policy.outcomes import Delivery, Happened, Note, Outcome
from rpcworker.wire.decoding import Request
from rpcworker.wire.logfields import (
    describe,
    id_text,
    log_fields,
    message_ids,
    printable,
    what_delivered,
)

LOG = logging.getLogger(__name__)

_DEBUG, _INFO, _WARNING, _ERROR = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)

#: the words of each note: (level, the line, whether the error's traceback goes with it).
#: The line's fields: binding, what (the message), handler, queue, detail, error.
WORDS: dict[Happened, tuple[int, str, bool]] = {
    Happened.DUPLICATE: (
        _INFO,
        "binding %(binding)s: request %(what)s already completed; not run again",
        False,
    ),
    Happened.NO_PRIORITY_METHOD: (
        _WARNING,
        "binding %(binding)s: %(what)s acked without "
        "running: handler %(handler)s has no %(detail)s() method",
        False,
    ),
    Happened.POISON: (
        _ERROR,
        "binding %(binding)s: poison message %(what)s dead-lettered: %(detail)s",
        False,
    ),
    Happened.UNSERIALISABLE: (
        _ERROR,
        "binding %(binding)s: result of %(what)s is not JSON-serialisable: %(error)s",
        False,
    ),
    Happened.RETRY_ASKED: (
        _INFO,
        "binding %(binding)s: handler asked to retry %(what)s: %(error)s",
        False,
    ),
    Happened.REJECTED: (
        _WARNING,
        "binding %(binding)s: handler rejected %(what)s: %(error)s",
        False,
    ),
    Happened.NO_HANDLE_MESSAGE: (
        _ERROR,
        "binding %(binding)s: %(what)s dead-lettered: %(detail)s",
        False,
    ),
    Happened.UNKNOWN_METHOD: (_WARNING, "binding %(binding)s: %(what)s refused: %(error)s", False),
    Happened.TIMED_OUT: (_ERROR, "binding %(binding)s: %(error)s; %(detail)s", False),
    Happened.FAILED: (
        _ERROR,
        "binding %(binding)s: handler %(handler)s failed on %(what)s (%(detail)s)",
        True,
    ),
    Happened.DEAD_LETTERED: (
        _WARNING,
        "binding %(binding)s: %(what)s dead-lettered: %(detail)s",
        False,
    ),
    Happened.NO_DELAY_QUEUE: (
        _WARNING,
        "binding %(binding)s: %(what)s: queue %(queue)s has "
        "no delay queue (a per-process queue, or the transport has no "
        "message TTL): dead-lettered instead of retried",
        False,
    ),
    Happened.RETRY_REFUSED: (
        _ERROR,
        "binding %(binding)s: the delay queue %(detail)s "
        "refused a retry of %(what)s; rejecting the message",
        False,
    ),
    Happened.DEAD_LETTER_REFUSED: (
        _ERROR,
        "binding %(binding)s: the parking lot refused a "
        "dead letter (%(what)s); rejecting the message instead",
        False,
    ),
    Happened.DROPPED: (
        _DEBUG,
        "binding %(binding)s: dropping the outcome of %(what)s: its "
        "connection was lost; the broker redelivers it",
        False,
    ),
}


class Teller:
    """Logs what happened to each delivery (``tell``) and, at debug level, each one
    received (``received``)."""

    def __init__(self, refusals: Refusals | None = None) -> None:
        self.refusals = refusals or Refusals()
        #: the line per delivery received is logged (debug level)
        self.debug = LOG.isEnabledFor(logging.DEBUG)

    def debug_changed(self) -> None:
        """The log level may have changed (SIGHUP): the debug line per delivery follows."""
        self.debug = LOG.isEnabledFor(logging.DEBUG)

    def received(self, binding: Binding, queue: str, message: Any, info: Any) -> None:
        """A delivery came in (asked only when ``debug``)."""
        ids = message_ids(message, None)
        LOG.debug(
            "binding %s: delivery %s on %s from exchange %r, routing key %r%s%s",
            binding.name,
            info.get("delivery_tag"),
            queue,
            info.get("exchange"),
            info.get("routing_key"),
            id_text(ids),
            " (redelivered)" if info["redelivered"] else "",
            extra={"binding": binding.name, **ids},
        )

    def tell(self, d: Delivery, outcome: Outcome) -> None:
        """Log what ``outcome`` says happened to ``d``."""
        if outcome.refusal is not None:
            self.refusals.log(d.binding, d.message, outcome.refusal, d.request)
        for note in outcome.notes:
            self.note(d, note)

    def note(self, d: Delivery, note: Note) -> None:
        level, line, with_traceback = WORDS[note.happened]
        if not LOG.isEnabledFor(level):
            return
        fields = {
            "binding": d.binding.name,
            "what": what_delivered(d.request),
            "handler": d.binding.handler,
            "queue": d.queue,
            "detail": note.detail,
            "error": note.error,
        }
        LOG.log(
            level,
            line,
            fields,
            exc_info=note.error if with_traceback else None,
            extra=log_fields(d.binding.name, d.request),
        )

    def summarise(self, final: bool = False) -> None:
        """The refusal lines held back (``Refusals.summarise``)."""
        self.refusals.summarise(final)


class Refusals:
    """The "message refused" lines: one per refused delivery, at most 10 per binding in
    10 s (``ratelimit.LogLimiter``), then one summary line per window."""

    def __init__(self, limiter: ratelimit.LogLimiter | None = None) -> None:
        self.limiter = limiter or ratelimit.LogLimiter()

    def log(
        self, binding: Binding, message: Any, reason: str, request: Request | None = None
    ) -> None:
        self.summarise()
        if self.limiter.admit(binding.name, reason):
            LOG.warning(
                "binding %s: message %s refused: %s",
                binding.name,
                describe(message, request),
                printable(reason),
                extra={**log_fields(binding.name, request), **message_ids(message, request)},
            )

    def summarise(self, final: bool = False) -> None:
        """The lines held back in windows that are over (all of them: ``final``)."""
        for s in self.limiter.pending() if final else self.limiter.expired():
            LOG.warning(
                "binding %s: %d more messages refused in the last %g s (last reason: %s)",
                s.key,
                s.count,
                s.interval,
                s.last_reason,
            )
