"""Where this process reads each shared stream from (``rabbit_stream_fanout``).

A stream keeps its messages: a consumer says where to start (``x-stream-offset``) and
every delivery names its own offset (the ``x-stream-offset`` header). oslo.messaging
starts at ``last`` (the last chunk, which may replay a few messages) and, after a
reconnect, after the last message it *received*, which skips the ones prefetched but
never handled. Here:

* a process starts at ``next``: the first message published after it subscribed;
* a consumer started again on the same connection (the byte budget's new window)
  starts after the highest offset received: what it had is still settled as usual;
* after a lost connection it starts at the lowest offset dropped before its handler
  ran (``lost``), so nothing is skipped; what comes again that was received before and
  not lost (handled, or still running when the connection went) is acked without
  running, so nothing runs twice;
* a consumer the broker cancelled (the stream was deleted, or re-created) starts at
  ``next`` again.

Loop thread only.
"""

from __future__ import annotations

from typing import Any

OFFSET_HEADER = "x-stream-offset"
#: where a process starts reading a stream it has not read before
START = "next"


class Cursor:
    """One stream's position in this process."""

    def __init__(self) -> None:
        self._highest: int | None = None
        #: received, then dropped with the connection before a handler took them
        self._lost: set[int] = set()

    def offset(self) -> int | str:
        """The ``x-stream-offset`` to (re)start consuming at."""
        if self._lost:
            return min(self._lost)
        if self._highest is not None:
            return self._highest + 1
        return START

    def take(self, offset: int) -> bool:
        """A delivery at ``offset`` arrived: whether to run it (False: this process had
        it already)."""
        if self._highest is None or offset > self._highest:
            self._highest = offset
            return True
        if offset in self._lost:
            self._lost.discard(offset)
            return True
        return False

    def lost(self, offset: int) -> None:
        self._lost.add(offset)

    def reset(self) -> None:
        """Start at the end again (the stream was deleted or its consumer cancelled)."""
        self._highest = None
        self._lost.clear()


def offset_of(message: Any) -> int | None:
    value = (message.headers or {}).get(OFFSET_HEADER)
    return value if isinstance(value, int) else None


class Streams:
    """The cursors of the streams this process reads, by queue name."""

    def __init__(self, queues: list[str] | None = None) -> None:
        self.cursors: dict[str, Cursor] = {q: Cursor() for q in queues or ()}

    def add(self, queue: str) -> Cursor:
        return self.cursors.setdefault(queue, Cursor())

    def take(self, queue: str, message: Any) -> bool:
        """Whether to run ``message``, delivered from the stream ``queue``."""
        cursor = self.cursors.get(queue)
        offset = offset_of(message)
        return cursor is None or offset is None or cursor.take(offset)

    def lost(self, queue: str, message: Any) -> None:
        """``message`` went with its connection before a handler took it."""
        cursor = self.cursors.get(queue)
        offset = offset_of(message)
        if cursor is not None and offset is not None:
            cursor.lost(offset)

    def reset(self) -> None:
        for cursor in self.cursors.values():
            cursor.reset()
