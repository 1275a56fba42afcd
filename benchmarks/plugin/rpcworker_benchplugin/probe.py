"""The handled-message probe: every contender's no-op handler calls ``PROBE.tick()``.

It records the ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the
machine) at which each message was handled. A daemon thread writes the state to
``$RPCWORKER_BENCH_PROBE_DIR/probe-<pid>.json`` (write to a temporary file, then rename):
``{"pid", "n"}`` while messages keep coming, and ``{"pid", "n", "times"}`` once the count
has not moved for one period. The harness sums ``n`` over the files of a run and computes
the drain rate from ``times``.

Without ``RPCWORKER_BENCH_PROBE_DIR`` the probe is off and ``tick()`` does nothing.
The cost of a tick is one ``list.append`` of one ``time.monotonic()`` (atomic under the
GIL, so handler threads need no lock): the same for every contender.
"""

from __future__ import annotations

import json
import os
import threading
import time

ENV_DIR = "RPCWORKER_BENCH_PROBE_DIR"
PERIOD = 0.05  # seconds between two looks of the writer thread


class Probe:
    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.times: list[float] = []
        self._started = False
        self._start_lock = threading.Lock()
        if not directory:
            self.tick = self._off  # type: ignore[method-assign]

    def _off(self) -> None:
        return None

    def tick(self) -> None:
        """Record that one message has been handled (call it from the handler)."""
        self.times.append(time.monotonic())
        if not self._started:
            self._start()

    def _start(self) -> None:
        # started lazily, in the process that handles messages (after any fork)
        with self._start_lock:
            if self._started:
                return
            self._started = True
            threading.Thread(target=self._writer, name="bench-probe", daemon=True).start()

    def _write(self, data: dict[str, object]) -> None:
        assert self.directory
        path = os.path.join(self.directory, f"probe-{os.getpid()}.json")
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def _writer(self) -> None:
        last_n, dumped = -1, False
        while True:
            time.sleep(PERIOD)
            n = len(self.times)
            try:
                if n != last_n:
                    self._write({"pid": os.getpid(), "n": n})
                    last_n, dumped = n, False
                elif not dumped:
                    self._write({"pid": os.getpid(), "n": n, "times": self.times[:n]})
                    dumped = True
            except OSError:
                return  # the harness removed the directory: nothing left to report


PROBE = Probe(os.environ.get(ENV_DIR))
