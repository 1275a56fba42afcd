"""Questions for the loop thread, asked from another thread (the test kit asks "idle?").

The loop owns every piece of engine state; another thread never reads it. It asks
instead: the question waits in a deque, the loop is woken, and it answers between two
turns, when nothing is half done.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Questions:
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._waiting: collections.deque[tuple[Callable[[], Any], Future[Any]]] = (
            collections.deque()
        )

    def ask(self, question: Callable[[], T], timeout: float) -> T:
        """``question()`` answered on the loop thread (any other thread); TimeoutError
        when the loop does not answer within ``timeout`` seconds."""
        future: Future[T] = Future()
        self._waiting.append((question, future))
        self._wake()
        return future.result(timeout)

    def answer(self) -> None:
        """Answer every waiting question (the loop thread)."""
        while self._waiting:
            question, future = self._waiting.popleft()
            try:
                future.set_result(question())
            except Exception as exc:
                future.set_exception(exc)

    def close(self) -> None:
        """The loop has stopped: no question will be answered."""
        while self._waiting:
            _, future = self._waiting.popleft()
            future.set_exception(RuntimeError("the worker stopped"))
