"""The benchmark table: percentiles, ratio lines and rows for missing figures (pure)."""

from __future__ import annotations

import math

from bench.report import Results, percentile, percentiles, render


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    p = percentiles([5.0, 1.0, 3.0])
    assert (p.count, p.p50, p.max) == (3, 3.0, 5.0)
    assert math.isnan(percentile([], 50))


def test_ratio_line_uses_the_lower_ceiling() -> None:
    r = Results(mode="quick", ticks=10, books=1, recorder_db=70.0, copy_ceiling=200.0)
    r.fetch_ceiling, r.naive = 100.0, 7.0
    text = render(r)
    assert "recorder / ceiling: 0.70" in text.splitlines()
    assert "recorder / naive: 10.0x" in text.splitlines()


def test_missing_figures_say_so_instead_of_failing() -> None:
    r = Results(mode="quick", ticks=10, books=1)
    r.skipped["scaling"] = "full run only"
    text = render(r)
    assert "recorder / ceiling: n/a" in text
    assert "full run only" in text
