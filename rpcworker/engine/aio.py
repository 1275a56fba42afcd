"""The asyncio event loop of a worker process, for ``async def`` handler methods.

A coroutine (or any awaitable) a handler method returns is awaited on one event loop
that runs in its own thread (``rpcworker-asyncio``), started the first time one is
needed: the handler thread that called the method waits for the result, so the
handler's deadline holds for it too, and a deadline *cancels* the task (its
``finally`` blocks run) instead of leaving a thread stuck. The loop thread never
touches kombu. A coroutine that blocks the loop (a blocking call without ``await``)
holds up every async handler of the process: await, or run it in an executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import Any

from rpcworker.errors import HandlerTimeout

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's handler event loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="rpcworker-asyncio", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def wait(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    """Await ``awaitable`` on the event loop and return its result (or raise what it
    raises); past ``timeout`` seconds the task is cancelled and HandlerTimeout raised."""
    future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), event_loop())
    try:
        return future.result(None if timeout is None else max(0.0, timeout))
    except concurrent.futures.TimeoutError:  # TimeoutError itself from Python 3.11
        if future.done():  # the coroutine's own TimeoutError
            raise
        future.cancel()
        raise HandlerTimeout("cancelled at its deadline") from None
