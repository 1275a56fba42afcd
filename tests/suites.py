"""Run the test suites one after the other, then print one line per suite with its
result and its time, so that a slow or failing suite shows at a glance.

    python -m tests.suites [--suite NAME ...] [PYTEST_ARGS ...]

``make test`` (and so CI) runs it after ruff and mypy: unit, examples, bench-guard,
functional, functional-4.x, rabbit4-strict, cluster and systemd ("bench-guard" is the drain
regression guard of tests/bench and benchmarks/guard.py: rpcworker's drain rate ÷ a bare
py-amqp consumer's, against a floor). Every suite runs, even after one failed; the exit
status is the first non-zero pytest status (5, "no tests collected", counts as success: a
suite that skips as a whole is reported as such). ``--suite NAME`` (repeatable, before the
pytest arguments) runs only the suites named.

A suite may have a ``setup``: a context manager around its pytest run that yields the
extra environment of that run. "functional-4.x" uses one to run tests/functional again,
against a RabbitMQ 4.x node (tests/rabbit4node.py) on 5673 instead of the host's 3.10 on
5672. When a setup cannot give its broker, the suite fails under CI (CI=true) and is
skipped elsewhere, with one line saying why and how to fix it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

#: the variable a setup names its broker's version in (shown on the summary line)
VERSION_VAR = "RPCWORKER_TEST_BROKER_VERSION"


class SuiteUnavailable(Exception):
    """A suite's setup could not give it what it needs (the message says why and how)."""


@contextlib.contextmanager
def rabbit4_permissive() -> Iterator[dict[str, str]]:
    """The stock RabbitMQ 4.x node on 5673 (root built first when missing), for the
    whole suite; the environment pointing tests/functional at it; stopped after."""
    from tests.rabbit4node import PERMISSIVE_PORT, Rabbit4Error, start_node

    try:
        node = start_node(PERMISSIVE_PORT, strict=False)
    except Rabbit4Error as exc:
        raise SuiteUnavailable(str(exc)) from exc
    print(f"== RabbitMQ {node.version} ({node.node}) on {node.url}", flush=True)
    try:
        yield node.test_env()
    finally:
        node.stop()


class Suite(NamedTuple):
    name: str
    paths: tuple[str, ...]
    setup: Callable[[], contextlib.AbstractContextManager[Mapping[str, str]]] | None = None


#: in the order they run: the fast ones first
SUITES: tuple[Suite, ...] = (
    Suite("unit", ("tests/unit",)),
    Suite(
        "examples",
        ("examples/rpcworker-handler-example/tests", "examples/rpcworker-nova-events/tests"),
    ),
    # a speed ratio, so the first suite on the broker: the host's broker is idle and holds
    # no queues of other tests, and no 4.x or cluster node (the later suites start them)
    # competes for the CPUs; a slower hot path also shows minutes into `make test`
    Suite("bench-guard", ("tests/bench",)),
    Suite("functional", ("tests/functional",)),
    Suite("functional-4.x", ("tests/functional",), rabbit4_permissive),
    # starts its own strict 4.x node (tests/rabbit4/conftest.py)
    Suite("rabbit4-strict", ("tests/rabbit4",)),
    Suite("cluster", ("tests/cluster",)),
    Suite("systemd", ("tests/systemd",)),
)

_SUMMARY = re.compile(r"\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b")
_NO_TESTS = 5
_FAILED = 1


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def run_suite(
    paths: Sequence[str], extra: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[int, str, float]:
    """pytest on ``paths`` (with ``env`` added to ours), its output passed through;
    (status, summary line, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-ra", *extra, *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    summary = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if _SUMMARY.search(line) and line.strip().strip("=").strip():
            summary = line.strip().strip("=").strip()
    status = proc.wait()
    return status, summary, time.monotonic() - started


def run(suite: Suite, extra: Sequence[str]) -> tuple[str, int, str, float]:
    """(label, status, summary, seconds) of one suite, its setup around it if any."""
    if suite.setup is None:
        return (suite.name, *run_suite(suite.paths, extra))
    started = time.monotonic()
    try:
        with suite.setup() as env:
            label = suite.name + (f" (RabbitMQ {env[VERSION_VAR]})" if env.get(VERSION_VAR) else "")
            return (label, *run_suite(suite.paths, extra, env))
    except SuiteUnavailable as exc:
        reason = str(exc).strip()
        first = reason.splitlines()[0] if reason else "its setup failed"
        seconds = time.monotonic() - started
        if _ci():
            print(f"\n*** suite {suite.name} FAILED (CI=true): {reason} ***", flush=True)
            return suite.name, _FAILED, f"FAILED: {first}", seconds
        print(f"\n*** SKIPPING suite {suite.name}: {first} ***", flush=True)
        return suite.name, _NO_TESTS, f"skipped: {first}", seconds


def select(argv: Sequence[str]) -> tuple[list[Suite], list[str]]:
    """(the suites named by leading ``--suite NAME`` options, or all; the pytest args)."""
    args, names = list(argv), []
    while len(args) >= 2 and args[0] == "--suite":
        names.append(args[1])
        del args[:2]
    known = {s.name: s for s in SUITES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; known: {', '.join(known)}")
    return ([known[n] for n in names] if names else list(SUITES)), args


def main(argv: Sequence[str] | None = None) -> int:
    suites, extra = select(sys.argv[1:] if argv is None else argv)
    results = []
    for suite in suites:
        print(f"== suite {suite.name}: {' '.join(suite.paths)}", flush=True)
        results.append(run(suite, extra))
    width = max(12, *(len(label) for label, *_ in results))
    print(f"\n{'suite':<{width}} time     result")
    first_failure = 0
    for label, status, summary, seconds in results:
        print(f"{label:<{width}} {seconds:6.0f}s  {summary or f'pytest exit {status}'}")
        if status not in (0, _NO_TESTS) and not first_failure:
            first_failure = status
    return first_failure


if __name__ == "__main__":
    sys.exit(main())
