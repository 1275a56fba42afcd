"""Run the test suites one after the other, then print one line per suite with its
result and its time, so that a slow or failing suite shows at a glance.

    python -m tests.suites [PYTEST_ARGS ...]

``make test`` (and so CI) runs it after ruff and mypy: unit, examples, functional,
cluster and systemd. Every suite runs, even after one
failed; the exit status is the first non-zero pytest status (5, "no tests collected",
counts as success: a suite that skips as a whole is reported as such).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence

#: (name, paths) in the order they run: the fast ones first
SUITES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unit", ("tests/unit",)),
    (
        "examples",
        ("examples/rpcworker-handler-example/tests", "examples/rpcworker-nova-events/tests"),
    ),
    ("functional", ("tests/functional",)),
    ("cluster", ("tests/cluster",)),
    ("systemd", ("tests/systemd",)),
)

_SUMMARY = re.compile(r"\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b")
_NO_TESTS = 5


def run_suite(paths: Sequence[str], extra: Sequence[str]) -> tuple[int, str, float]:
    """pytest on ``paths``, its output passed through; (status, summary line, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-ra", *extra, *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


def main(argv: Sequence[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    results = []
    for name, paths in SUITES:
        print(f"== suite {name}: {' '.join(paths)}", flush=True)
        results.append((name, *run_suite(paths, extra)))
    print("\nsuite        time     result")
    first_failure = 0
    for name, status, summary, seconds in results:
        print(f"{name:<12} {seconds:6.0f}s  {summary or f'pytest exit {status}'}")
        if status not in (0, _NO_TESTS) and not first_failure:
            first_failure = status
    return first_failure


if __name__ == "__main__":
    sys.exit(main())
