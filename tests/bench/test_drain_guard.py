"""The drain regression guard (``benchmarks/guard.py``) as a test: rpcworker's drain rate
÷ the bare py-amqp consumer's, median of the per-round ratios, at or above the guard's
FLOOR. A ratio of two runs back to back in every round, never an absolute time.

With no broker on the test broker's address it fails under CI (CI=true) and skips elsewhere,
with one line saying how to start RabbitMQ; so does a missing py-amqp contender or bench
plugin (``make install`` installs it), saying what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

from benchmarks.guard import preflight
from tests.functional.conftest import BROKER_HOST, BROKER_PORT, START_HINT, broker_up
from tests.helpers import rabbitmqctl_path_env

ROOT = Path(__file__).resolve().parents[2]
#: the guard takes about a minute; its own deadlines end a stuck run well before this
GUARD_TIMEOUT = 280


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere; either way one line saying why and what to do."""
    if _ci():
        pytest.fail(f"drain guard cannot run (CI=true): {reason}", pytrace=False)
    print(f"\n*** SKIPPING the drain guard: {reason} ***", file=sys.stderr)
    pytest.skip(reason)


def run_guard(json_path: Path) -> tuple[dict[str, Any] | None, str]:
    """``python -m benchmarks.guard`` on the test broker: (its JSON verdict, its output)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.guard",
            *("--json", str(json_path), "--host", BROKER_HOST, "--port", str(BROKER_PORT)),
        ],
        cwd=ROOT,
        env=rabbitmqctl_path_env(),  # the harness's own `rabbitmqctl list_queues`
        capture_output=True,
        text=True,
        timeout=GUARD_TIMEOUT,
        check=False,
    )
    output = proc.stdout + proc.stderr
    print(output)  # the per-round lines, shown with -s and in the report of a failure
    verdict = json.loads(json_path.read_text()) if json_path.exists() else None
    return verdict, output


def test_drain_guard(tmp_path: Path) -> None:
    if not broker_up():
        unavailable(START_HINT % (BROKER_HOST, BROKER_PORT))
    reason = preflight()
    if reason:
        unavailable(reason)
    # a median below the floor is confirmed by a second run before it fails the test: a
    # regression fails both, a slow spell of a shared 2-core machine seldom lasts through
    # two (the first CI run that met one went from 13,000 to 7,500 msg/s mid-run)
    for attempt in (1, 2):
        verdict, output = run_guard(tmp_path / f"guard-{attempt}.json")
        assert verdict is not None, f"the guard wrote no verdict:\n{output[-4000:]}"
        assert not verdict["errors"], f"drain runs failed: {verdict['errors']}\n{output[-4000:]}"
        median = verdict["median"]
        if median is not None and median >= verdict["floor"]:
            return
        print(f"drain guard run {attempt}: {failure(verdict)}")
    pytest.fail(failure(verdict), pytrace=False)


def failure(verdict: dict[str, Any]) -> str:
    median = "none" if verdict["median"] is None else f"{verdict['median']:.2f}"
    ratios = ", ".join(f"{x:.2f}" for x in verdict["ratios"]) or "none"
    rates = "; ".join(f"{r['subject']:.0f} ÷ {r['baseline']:.0f}" for r in verdict["rounds"])
    return (
        f"drain regression: rpcworker ÷ bare py-amqp median {median} < floor "
        f"{verdict['floor']:.2f} (per-round ratios {ratios}; msg/s {rates}); "
        "benchmarks/guard.py says how the floor was set"
    )
