"""The hot-path shortcuts taken for speed give exactly what the plain code gives.

Owns the equivalence checks of the benchmark-driven optimisations (pure, no I/O)."""

from __future__ import annotations

import random

from recorder.core.records import TickRow
from recorder.core.rollups import ROLLUPS, aggregate
from recorder.sinks.timescale.sink import coarsen, rollup_bars


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


def test_the_benchmarks_decode_step_runs_the_recorders_decode() -> None:
    """bench/scenarios.decode_backlog calls recorder.core.records.decode directly (it broke once
    when decode's signature changed: bench/ is not type-checked in CI)."""
    from bench.scenarios import decode_backlog
    from recorder.settings import TopicKind

    value = b'{"symbol":"AAA","price":1.5,"volume":3,"timestamp":1764133200123456789}'
    backlog, rate = decode_backlog([(TopicKind.TICK, 1764133200123, value)])
    assert [r.symbol for r in backlog.ticks] == ["AAA"] and rate > 0
