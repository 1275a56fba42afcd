"""Handlers for rpcworker's functional tests.

``recorder`` appends one JSON line per message it handles to the file named by
``[recorder] path`` (a handler registering its own options on the conf it is
given), so a test can see exactly what was handled, how often, and when.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from typing import Any

from oslo_config import cfg

import rpcworker

_opts = [
    cfg.StrOpt("path", help="File the recorder appends one JSON line per message to."),
    cfg.FloatOpt("delay", default=0.0, help="Seconds every method sleeps before returning."),
    cfg.StrOpt(
        "hold_while",
        help="weigh() waits while this file exists (a handler held for as long as a test needs).",
    ),
    cfg.StrOpt(
        "fail_while",
        help="flaky() and events with a 'flaky' key raise ValueError "
        "while this file exists (a cause an operator can fix).",
    ),
]


class Recorder:
    """Record every call, cast and event as a JSON line in [recorder] path."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(_opts, group="recorder")
        self.path = conf.recorder.path
        self.delay = conf.recorder.delay
        self.fail_while = conf.recorder.fail_while
        self.hold_while = conf.recorder.hold_while
        self._lock = threading.Lock()
        self._leaked: list[bytearray] = []
        #: a new one for every process (a re-executed process keeps its pid)
        self.instance = uuid.uuid4().hex

    def _write(self, entry: dict[str, Any]) -> None:
        entry["pid"] = os.getpid()
        entry["instance"] = self.instance
        entry["time"] = time.time()
        if not self.path:
            return
        with self._lock, open(self.path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True, default=repr) + "\n")
            f.flush()

    def record(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Record the call and return its arguments."""
        if self.delay:
            time.sleep(self.delay)
        self._write({"kind": "rpc", "method": "record", "args": kwargs, "ctxt": ctxt})
        return kwargs

    def slow(self, ctxt: dict[str, Any], seconds: float = 1.0, **kwargs: Any) -> dict[str, Any]:
        """Record a 'start' line, sleep, record a 'done' line."""
        self._write({"kind": "start", "method": "slow", "args": kwargs})
        time.sleep(float(seconds))
        self._write({"kind": "rpc", "method": "slow", "args": kwargs})
        return kwargs

    def weigh(self, ctxt: dict[str, Any], blob: str = "", **kwargs: Any) -> int:
        """Sleep ``[recorder] delay`` (and while ``[recorder] hold_while`` exists), then
        record the length of ``blob`` (not the blob: the memory tests send bodies of many
        megabytes) and the other arguments."""
        if self.delay:
            time.sleep(self.delay)
        while self.hold_while and os.path.exists(self.hold_while):
            time.sleep(0.05)
        self._write({"kind": "rpc", "method": "weigh", "args": kwargs, "size": len(blob)})
        return len(blob)

    def fail(self, ctxt: dict[str, Any], **kwargs: Any) -> None:
        """Record, then raise ValueError."""
        self._write({"kind": "rpc", "method": "fail", "args": kwargs})
        raise ValueError("recorder was asked to fail", kwargs.get("tag"))

    def _broken(self) -> bool:
        return bool(self.fail_while) and os.path.exists(self.fail_while)

    def flaky(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Raise ValueError while [recorder] fail_while exists; else record."""
        if self._broken():
            raise ValueError("flaky: the cause is not fixed yet", kwargs.get("tag"))
        self._write({"kind": "rpc", "method": "flaky", "args": kwargs})
        return kwargs

    def reject(self, ctxt: dict[str, Any], **kwargs: Any) -> None:
        """Record, then raise rpcworker.Reject."""
        self._write({"kind": "rpc", "method": "reject", "args": kwargs})
        raise rpcworker.Reject("rejected on request")

    def requeue(self, ctxt: dict[str, Any], **kwargs: Any) -> None:
        """Record, then raise rpcworker.Requeue."""
        self._write({"kind": "rpc", "method": "requeue", "args": kwargs})
        raise rpcworker.Requeue("requeue on request")

    def hang(self, ctxt: dict[str, Any], seconds: float = 3600.0, **kwargs: Any) -> None:
        """Record a 'start' line, then block for ``seconds`` (a hung handler)."""
        self._write({"kind": "start", "method": "hang", "args": kwargs})
        time.sleep(float(seconds))

    def crash(self, ctxt: dict[str, Any], **kwargs: Any) -> None:
        """Record a 'start' line, then kill the whole worker process (os._exit(70))."""
        self._write({"kind": "start", "method": "crash", "args": kwargs})
        os._exit(70)

    def handle_message(self, message: rpcworker.Message) -> None:
        """Record an event with its routing key and exchange (an event with a "flaky"
        key raises while [recorder] fail_while exists)."""
        if self.delay:
            time.sleep(self.delay)
        if isinstance(message.body, dict) and "flaky" in message.body and self._broken():
            raise ValueError("flaky: the cause is not fixed yet", message.body["flaky"])
        self._write(
            {
                "kind": "event",
                "body": message.body,
                "routing_key": message.routing_key,
                "exchange": message.exchange,
                "redelivered": message.redelivered,
                "headers": dict(message.headers),
            }
        )


class Misbehaving(Recorder):
    """The recorder, plus a leaking method and async def ones (for the execution tests)."""

    def leak(self, ctxt: dict[str, Any], mib: int = 10, **kwargs: Any) -> None:
        """Record, then keep ``mib`` MiB alive for good (a leaking handler)."""
        if self.delay:
            time.sleep(self.delay)
        self._leaked.append(bytearray(os.urandom(1024)) * (1024 * int(mib)))
        self._write({"kind": "rpc", "method": "leak", "args": kwargs})

    async def arecord(self, ctxt: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """An ``async def`` method: await a little, record, return its arguments."""
        await asyncio.sleep(0.01)
        self._write({"kind": "rpc", "method": "arecord", "args": kwargs})
        return kwargs

    async def ahang(self, ctxt: dict[str, Any], seconds: float = 3600.0, **kwargs: Any) -> None:
        """An ``async def`` method that awaits for ``seconds``; records 'start', and
        'finally' from its finally block (when it is cancelled at its deadline)."""
        self._write({"kind": "start", "method": "ahang", "args": kwargs})
        try:
            await asyncio.sleep(float(seconds))
        finally:
            self._write({"kind": "finally", "method": "ahang", "args": kwargs})


class Notified(Recorder):
    """The recorder with notification methods info(), error() and sample() (not warn):
    each records the notification; a payload with "fail" raises, with "requeue" returns
    "requeue"."""

    def _notification(
        self,
        priority: str,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> str | None:
        if self.delay:
            time.sleep(self.delay)
        self._write(
            {
                "kind": "notification",
                "method": priority,
                "ctxt": ctxt,
                "publisher_id": publisher_id,
                "event_type": event_type,
                "payload": payload,
                "metadata": metadata,
            }
        )
        if isinstance(payload, dict) and payload.get("fail"):
            raise ValueError("asked to fail")
        if isinstance(payload, dict) and payload.get("requeue"):
            return "requeue"
        return None

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> str | None:
        """Record an info notification."""
        return self._notification("info", ctxt, publisher_id, event_type, payload, metadata)

    def error(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> str | None:
        """Record an error notification."""
        return self._notification("error", ctxt, publisher_id, event_type, payload, metadata)

    def sample(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: Any,
        metadata: dict[str, Any],
    ) -> str | None:
        """Record a sample notification."""
        return self._notification("sample", ctxt, publisher_id, event_type, payload, metadata)


class _Target:
    namespace = "testns"
    version = "1.3"


class Versioned:
    """A handler with target namespace 'testns', version 1.3."""

    target = _Target()

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf

    def which(self, ctxt: dict[str, Any]) -> str:
        """Return 'versioned'."""
        return "versioned"


class BrokenInit:
    """Raises in its constructor."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        raise RuntimeError("BrokenInit refuses to start")


def read_records(path: str) -> list[dict[str, Any]]:
    """The JSON lines written so far (a test helper)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
