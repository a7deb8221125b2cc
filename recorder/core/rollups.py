"""OHLCV aggregation of tick rows into time buckets (pure), for plain-PostgreSQL mode.

The database merges these partial bars with what it already holds (earliest open, latest
close, extreme high/low, summed volume), so batches can arrive in any order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from recorder.core.records import TickRow

NS_PER_MINUTE = 60 * 1_000_000_000
ROLLUPS: dict[str, int] = {
    "tick_1min": NS_PER_MINUTE,
    "tick_5min": 5 * NS_PER_MINUTE,
    "tick_1hour": 60 * NS_PER_MINUTE,
}


class Bar(NamedTuple):
    bucket_ns: int
    symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: int
    open_ns: int
    close_ns: int


def aggregate(rows: Iterable[TickRow], bucket_ns: int) -> list[Bar]:
    """Bars per (symbol, bucket), sorted by that key so concurrent upserts lock in one order."""
    bars: dict[tuple[str, int], list[float | int]] = {}
    for row in rows:
        t = row.time_ns
        key = (row.symbol, t - t % bucket_ns)
        bar = bars.get(key)
        price = row.price
        if bar is None:
            bars[key] = [price, price, price, price, row.volume, t, t]
            continue
        if t < bar[5]:
            bar[0], bar[5] = price, t
        if price > bar[1]:
            bar[1] = price
        if price < bar[2]:
            bar[2] = price
        if t >= bar[6]:
            bar[3], bar[6] = price, t
        bar[4] += row.volume
    out = []
    for (symbol, bucket), b in sorted(bars.items()):
        out.append(
            Bar(
                bucket,
                symbol,
                float(b[0]),
                float(b[1]),
                float(b[2]),
                float(b[3]),
                int(b[4]),
                int(b[5]),
                int(b[6]),
            )
        )
    return out


def merge(a: Bar, b: Bar) -> Bar:
    """What the database's upsert does with two bars of one key (used to test it)."""
    first = a if a.open_ns <= b.open_ns else b
    close = b if b.close_ns >= a.close_ns else a
    return Bar(
        a.bucket_ns,
        a.symbol,
        first.open,
        max(a.high, b.high),
        min(a.low, b.low),
        close.close,
        a.volume + b.volume,
        min(a.open_ns, b.open_ns),
        max(a.close_ns, b.close_ns),
    )
