"""The drain regression guard: ``python -m benchmarks.guard`` (``make bench-guard``, and the
"bench-guard" suite of ``make test``).

rpcworker (the harness's "rpcworker" drain contender: one ``direct`` binding, shipped
defaults) and the bare py-amqp consumer (``benchmarks/contender_pyamqp.py``) drain the same
N messages back to back in every round, through the harness's own ``Harness.measure_drain``.
The guard judges the median of the per-round ratios rpcworker msg/s ÷ py-amqp msg/s against
a floor: a ratio, never an absolute time, so a slower or busier machine moves both sides of a
round alike. Exit status 0 when the median is at or above the floor, 1 when it is below (or
a run failed), 2 when it cannot run (no broker, py-amqp or the bench plugin missing).

    python -m benchmarks.guard [--floor X] [--rounds R] [-n N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import util
from pathlib import Path
from typing import Any

from benchmarks.contenders import DRAIN, missing
from benchmarks.infra import Proc
from benchmarks.run import Harness, parse_args

#: the floor of the median ratio rpcworker ÷ bare py-amqp (drain msg/s, 19 rounds × 5,000
#: messages), set from repeated guard runs on the 2-core machine (RabbitMQ 3.10, 2026-12-03):
#: - on 61f38f4 (issue 24's hot path): medians 1.53, 1.55, 1.62, 1.49, 1.47, typical 1.53;
#:   a 20 % loss of rpcworker's rate gives 0.8 × 1.53 = 1.22, below the floor; in CI on a
#:   busier machine the same code gave 1.28 once (rpcworker's rate fell from 13,000 to
#:   7,500 msg/s mid-run, the single-threaded consumer's less), hence 1.25 and not 1.30,
#:   and tests/bench confirms a median below the floor with a second run before failing;
#: - on d987579 (before it): medians 1.02 to 1.20, typical 1.09; a busy-wait handicap of
#:   about 19 % in the handler gave 0.88 and 0.90.
#: The per-round ratios and the rule are in benchmarks/RESULTS.md; re-measure and change
#: this one number when rpcworker's hot path changes.
FLOOR = 1.25
#: rounds × messages: per-round ratios spread widely here (coefficient of variation 0.15),
#: so many short rounds; medians of 5 rounds ranged 0.93 to 1.31, too wide for a floor that
#: both catches a 20 % loss and never flakes. 19 rounds of 5,000 take about 80 s.
ROUNDS = 19
N = 5_000
#: the two sides of every round (keys of ``contenders.DRAIN``); which goes first alternates
SUBJECT, BASELINE = "rpcworker", "pyamqp"
#: what a run needs besides a broker: the distributions, and the modules it starts
NEEDS_DISTS = ("amqp", "rpcworker-benchplugin")
NEEDS_MODULES = ("benchmarks.contender_pyamqp", "rpcworker_benchplugin.probe")


@dataclass
class Round:
    round: int
    subject: float
    baseline: float

    @property
    def ratio(self) -> float:
        return self.subject / self.baseline


@dataclass
class Verdict:
    floor: float
    n: int
    rounds: list[Round] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ratios(self) -> list[float]:
        return [r.ratio for r in self.rounds]

    @property
    def median(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def passed(self) -> bool:
        return not self.errors and self.median is not None and self.median >= self.floor

    def summary(self) -> str:
        median = "–" if self.median is None else f"{self.median:.2f}"
        ratios = ", ".join(f"{x:.2f}" for x in self.ratios) or "none"
        errors = f"; {len(self.errors)} failed run(s)" if self.errors else ""
        result = "PASS" if self.passed else "FAIL"
        return f"median ratio {median} (rounds {ratios}), floor {self.floor:.2f}{errors}: {result}"

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ratios": self.ratios,
            "median": self.median,
            "passed": self.passed,
            "subject": DRAIN[SUBJECT][0].label,
            "baseline": DRAIN[BASELINE][0].label,
        }


def preflight() -> str | None:
    """Why the guard cannot run here (the fix in the text), or None when it can."""
    if BASELINE not in DRAIN:
        return f"no {BASELINE!r} drain contender in benchmarks/contenders.py"
    fix = "run `make install` (it installs kombu's py-amqp and -e benchmarks/plugin)"
    for dist in NEEDS_DISTS:
        if missing(dist):
            return f"{dist} is not installed: {fix}"
    for module in NEEDS_MODULES:
        if util.find_spec(module) is None:
            return f"cannot import {module}: {fix}, from the repository root"
    return None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.guard",
        description="Fail when rpcworker's drain rate falls below FLOOR × the bare py-amqp "
        "consumer's (median of the per-round ratios).",
    )
    p.add_argument("--floor", type=float, default=FLOOR, help="default %(default)s")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="default %(default)s")
    p.add_argument("-n", "--n", type=int, default=N, help="messages per run (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the verdict as JSON here")
    p.add_argument("--host", default=os.environ.get("RPCWORKER_TEST_BROKER_HOST", "127.0.0.1"))
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("RPCWORKER_TEST_BROKER_PORT", "5672"))
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or args.n < 1:
        p.error("--rounds and -n must be at least 1")
    return args


def harness_args(args: argparse.Namespace) -> argparse.Namespace:
    """The harness's own options for these sizes and this broker (its --lock from the
    environment, RPCWORKER_BENCH_LOCK, as ``make bench``)."""
    return parse_args(
        [
            *("--phases", "drain", "--contenders", f"{SUBJECT},{BASELINE}"),
            *("--n", str(args.n), "--rounds", str(args.rounds)),
            *("--host", args.host, "--port", str(args.port)),
        ]
    )


def measure(harness: Harness, key: str, n: int) -> float:
    """One drain run of contender ``key`` through the harness: its msg/s."""
    run = DRAIN[key][0](harness.broker, harness.uid(key[:6]), harness.workdir)
    return float(harness.measure_drain(run, n)["rate"])


def one_round(harness: Harness, r: int, verdict: Verdict) -> None:
    """Both sides back to back (under the harness's broker lock), the one that goes first
    alternating from round to round; one line printed. Each run deletes its own queues; the
    sweep of leftovers is once, at the end."""
    order = (SUBJECT, BASELINE) if r % 2 else (BASELINE, SUBJECT)
    try:
        with harness.lock():
            rates = {key: measure(harness, key, verdict.n) for key in order}
    except Exception as exc:
        verdict.errors.append(f"round {r}: {exc}")
        harness.say(f"guard round {r}/{harness.args.rounds}: FAILED {exc}")
        return
    done = Round(r, rates[SUBJECT], rates[BASELINE])
    verdict.rounds.append(done)
    harness.say(
        f"guard round {r}/{harness.args.rounds}: "
        + ", ".join(f"{DRAIN[key][0].label} {rates[key]:6.0f} msg/s" for key in order)
        + f"; ratio {done.ratio:.2f}"
    )


def guard(harness: Harness, args: argparse.Namespace) -> Verdict:
    """All the rounds on ``harness``; the verdict."""
    verdict = Verdict(args.floor, args.n)
    harness.say(
        f"drain guard: {args.rounds} round(s) of {args.n:,} messages, "
        f"{SUBJECT} ÷ {BASELINE}, floor {args.floor:.2f}"
    )
    try:
        for r in range(1, args.rounds + 1):
            one_round(harness, r, verdict)
    finally:
        Proc.stop_all()
        harness.sweep()
        harness.broker.close()
    verdict.seconds = time.monotonic() - harness.started
    if verdict.errors:
        harness.say(f"contender logs kept in {harness.workdir}")
    else:
        shutil.rmtree(harness.workdir, ignore_errors=True)
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    reason = preflight()
    if reason:
        print(f"benchmarks.guard: cannot run: {reason}", file=sys.stderr)
        return 2
    try:
        harness = Harness(harness_args(args))
    except Exception as exc:
        print(
            f"benchmarks.guard: cannot reach RabbitMQ at {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 2
    verdict = guard(harness, args)
    print(f"drain guard ({verdict.seconds:.0f} s): {verdict.summary()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(verdict.as_json(), indent=1))
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
