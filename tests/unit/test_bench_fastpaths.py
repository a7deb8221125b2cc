"""The hot-path shortcuts taken for speed give exactly what the plain code gives.

Owns the equivalence checks of the benchmark-driven optimisations (pure, no I/O)."""

from __future__ import annotations

import random

from recorder.records import TickRow
from recorder.rollups import ROLLUPS, aggregate
from recorder.sinks.timescale import coarsen, rollup_bars


def _ticks(n: int, seed: int) -> list[TickRow]:
    rng = random.Random(seed)
    t = 1_764_133_200_000_000_000
    out = []
    for _ in range(n):
        # Out-of-order and equal timestamps, several symbols and hours: the cases that decide
        # which tick is a bucket's open and close.
        t += rng.choice((0, 0, 1, 7_000_000, 61_000_000_000, -3_000_000_000))
        price = round(rng.uniform(1, 200), 2)
        out.append(TickRow(t, f"S{rng.randrange(5)}", price, rng.randrange(0, 900), None, None))
    return out


def test_rollup_bars_equal_aggregating_each_bucket_from_the_ticks() -> None:
    for seed in range(20):
        ticks = _ticks(3000, seed)
        bars = rollup_bars(ticks)
        assert set(bars) == set(ROLLUPS)
        for view, bucket_ns in ROLLUPS.items():
            assert bars[view] == aggregate(ticks, bucket_ns), (seed, view)


def test_coarsen_of_nothing_is_nothing() -> None:
    assert coarsen([], 300 * 10**9) == []
