"""The benchmark report renders tables with skipped (short) rows."""

from __future__ import annotations

import pytest

report = pytest.importorskip("benchmarks.report")


def test_short_rows_are_padded() -> None:
    text = report.table(["a", "b", "c"], [["1", "2", "3"], ["skipped", "why"]])
    lines = text.splitlines()
    assert len(lines) == 4
    assert all(line.count("|") == 4 for line in lines)
