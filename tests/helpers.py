"""Shared test helpers: waiting on conditions with deadlines (never bare sleeps), and the
`rabbitmqctl` of the broker under test."""

from __future__ import annotations

import os
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
        last = condition()
    return last


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH -> (status, body); (0, reason) when nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening (yet)
        return 0, str(exc)


def rabbitmqctl_command() -> list[str]:
    """The `rabbitmqctl` of the broker under test, as an argv prefix.

    RPCWORKER_TEST_RABBITMQCTL (a command line, split as a shell would), else the host's
    ``rabbitmqctl``. The 4.x pass sets it to the wrapper tests/rabbit4node.py writes: the
    host's 3.10 CLI cannot talk to a 4.x node, and it must never reach the host's node
    (port 5672) while the tests run against another one.
    """
    return shlex.split(os.environ.get("RPCWORKER_TEST_RABBITMQCTL", "").strip() or "rabbitmqctl")


def rabbitmqctl_path_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: our environment) for a program that runs a bare ``rabbitmqctl``
    of its own (benchmarks/): when RPCWORKER_TEST_RABBITMQCTL names an executable called
    ``rabbitmqctl`` (tests/rabbit4node.py's wrapper), its directory goes first on PATH, so
    that program reaches the broker under test and never the host's."""
    env = dict(os.environ if base is None else base)
    command = rabbitmqctl_command()
    wrapper = Path(command[0])
    if len(command) == 1 and wrapper.name == "rabbitmqctl" and wrapper.is_absolute():
        env["PATH"] = os.pathsep.join([str(wrapper.parent), env.get("PATH", os.defpath)])
    return env
