"""The tally of one fault-injection run: which ids were handled, how often.

``tally()`` reads the recorder's JSON lines (tolerating a torn last line, in case a
worker was killed in the middle of a write) and ``report()`` prints one line such as

    FAULT broker-restart x3: 2000 sent, 2000 handled, 0 missing, 37 duplicates (...)

and appends it to the file named by the environment variable RPCWORKER_FAULT_REPORT,
when it is set, so that the figures can be quoted after a CI run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

REPORT_ENV = "RPCWORKER_FAULT_REPORT"


def handled_ids(path: str | Path, method: str = "record") -> tuple[collections.Counter[int], int]:
    """How many times each id was handled, and how many lines could not be parsed."""
    counts: collections.Counter[int] = collections.Counter()
    torn = 0
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return counts, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if entry.get("method") != method:
                continue
            counts[int(entry["args"]["id"])] += 1
        except (ValueError, KeyError, TypeError):
            torn += 1
    return counts, torn


@dataclasses.dataclass(frozen=True)
class Tally:
    fault: str
    sent: int  #: ids 0..sent-1 were published and confirmed
    handled: int  #: distinct ids among them handled at least once
    handlings: int  #: handler runs for those ids
    missing: list[int]
    unexpected: list[int]  #: ids handled that were never sent (must be none)
    torn: int  #: recorder lines that could not be parsed
    detail: str = ""

    @property
    def duplicates(self) -> int:
        """Handler runs beyond the first for each id."""
        return self.handlings - self.handled

    def line(self) -> str:
        text = (
            f"FAULT {self.fault}: {self.sent} sent, {self.handled} handled, "
            f"{len(self.missing)} missing, {self.duplicates} duplicates"
        )
        extras = [self.detail] if self.detail else []
        if self.unexpected:
            extras.append(f"{len(self.unexpected)} unexpected ids")
        if self.torn:
            extras.append(f"{self.torn} unreadable recorder lines")
        return text + (f" ({'; '.join(extras)})" if extras else "")


def tally(fault: str, sent: int, path: str | Path, detail: str = "") -> Tally:
    counts, torn = handled_ids(path)
    ids = set(range(sent))
    unexpected = sorted(i for i in counts if i not in ids)
    return Tally(
        fault=fault,
        sent=sent,
        handled=sum(1 for i in counts if i in ids),
        handlings=sum(n for i, n in counts.items() if i in ids),
        missing=sorted(ids - set(counts)),
        unexpected=unexpected,
        torn=torn,
        detail=detail,
    )


def report(t: Tally) -> str:
    """Print the FAULT line, and append it to $RPCWORKER_FAULT_REPORT when set."""
    line = t.line()
    print(f"\n{line}", flush=True)
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")
    return line
