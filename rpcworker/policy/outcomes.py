"""What the decisions (``policy.decisions``) are about and what they return.

A ``Delivery`` is one received message and where it came from. A decision returns an
``Outcome`` (the ``Action`` to carry out, the reply to send, why, and ``Note``s that say
what happened) or a ``Start`` (run the handler). The decisions never log: each ``Note``
is worded and logged once, by the engine's teller (``engine.telling``), when the engine
carries the outcome out or drops it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from rpcworker.config.bindingconf import Binding
from rpcworker.wire.decoding import Request
from rpcworker.wire.replyformat import Reply


class Action(enum.Enum):
    NONE = "none"  # already acked on receipt
    ACK = "ack"
    RETRY = "retry"  # to the delay queue of the next attempt, then ack
    DEAD_LETTER = "dead-letter"  # to the parking lot, then ack (see resolve())
    COUNT = "count"  # to the tail of the same queue with the redelivery count + 1, then ack
    REJECT = "reject"  # basic.reject without requeue: the queue's own DLX, if any, applies
    REQUEUE = "requeue"  # basic.reject with requeue
    DROP = "drop"  # nothing: its connection is gone and the broker redelivers it


#: actions carried out by publishing a copy (confirmed) before the ack
COPIES = frozenset({Action.RETRY, Action.DEAD_LETTER, Action.COUNT})


class Happened(enum.Enum):
    """What a ``Note`` says happened to a delivery (the teller has the words for each)."""

    DUPLICATE = "duplicate"  # already completed: not run again
    NO_PRIORITY_METHOD = "no-priority-method"  # detail: the priority
    POISON = "poison"  # detail: why
    UNSERIALISABLE = "unserialisable"  # error: the TypeError / ValueError
    RETRY_ASKED = "retry-asked"  # error: the Requeue
    REJECTED = "rejected"  # error: the Reject
    NO_HANDLE_MESSAGE = "no-handle-message"  # detail: why
    UNKNOWN_METHOD = "unknown-method"  # error: NoSuchMethod / UnsupportedVersion
    TIMED_OUT = "timed-out"  # error: the HandlerTimeout; detail: what became of it
    FAILED = "failed"  # error (logged with its traceback); detail: what happens next
    DEAD_LETTERED = "dead-lettered"  # detail: why
    NO_DELAY_QUEUE = "no-delay-queue"  # a retry dead-lettered instead
    RETRY_REFUSED = "retry-refused"  # detail: the delay queue
    DEAD_LETTER_REFUSED = "dead-letter-refused"
    DROPPED = "dropped"  # its connection was lost before it settled


@dataclasses.dataclass(frozen=True, slots=True)
class Note:
    """One thing a decision says happened, for the log."""

    happened: Happened
    detail: str = ""
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    action: Action
    reply: Reply | None = None
    #: why it failed (dead-letter headers, the failure metric)
    reason: str | None = None
    #: refused before dispatch (not decodable, unknown method): the reason of the
    #: rate-limited "refused" line
    refusal: str | None = None
    #: the broker refused the copy this outcome was carried out with (rejected instead)
    copy_refused: bool = False
    #: a notification the binding's filters kept from the handler (acked)
    filtered: bool = False
    #: what happened, in the order it happened
    notes: tuple[Note, ...] = ()

    @property
    def dead_lettered(self) -> bool:
        """Parked, or rejected for want of a parking lot (not a refused copy)."""
        return self.action is Action.DEAD_LETTER or (
            self.action is Action.REJECT and not self.copy_refused
        )

    def noting(self, *notes: Note) -> Outcome:
        """This outcome with ``notes`` added."""
        return dataclasses.replace(self, notes=self.notes + notes)


class Start(enum.Enum):
    """``on_receipt`` lets the delivery run: settled later by its handler's outcome."""

    RUN = "run"
    ACK_THEN_RUN = "ack-then-run"  # acknowledge = before: the ack goes out first


RUN, ACK_THEN_RUN = Start.RUN, Start.ACK_THEN_RUN


@dataclasses.dataclass(slots=True)
class Delivery:
    """One received message and where it came from."""

    message: Any  # kombu.Message
    binding: Binding
    queue: str
    request: Request | None  # None when it could not be decoded
    #: the queue has delay queues (a retry can wait there)
    retryable: bool = True
    #: bytes of the body (counted against max_inflight_bytes until settled)
    size: int = 0
