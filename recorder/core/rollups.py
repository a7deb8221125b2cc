"""OHLCV aggregation of ticks into time buckets (pure), for plain-PostgreSQL and Apache modes.

The database merges these partial bars with what it already holds (earliest open, latest
close, extreme high/low, summed volume), so batches can arrive in any order. `bars` works on a
flush's columns in one vectorised pass; `aggregate` is the plain per-row definition it is
tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass(frozen=True, slots=True)
class Bars:
    """Bars as columns, sorted by (symbol, bucket) so concurrent upserts lock in one order."""

    bucket_ns: np.ndarray
    symbol: pa.Array
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    open_ns: np.ndarray
    close_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.bucket_ns)

    def rows(self) -> list[Bar]:
        """As `Bar` tuples (what `aggregate` returns; for tests)."""
        return [
            Bar(int(b), s, float(o), float(h), float(lo), float(c), int(v), int(on), int(cn))
            for b, s, o, h, lo, c, v, on, cn in zip(
                self.bucket_ns, self.symbol.to_pylist(), self.open, self.high, self.low,
                self.close, self.volume, self.open_ns, self.close_ns, strict=True,
            )
        ]  # fmt: skip


def bars(time_ns: np.ndarray, symbol: pa.Array, price: np.ndarray, volume: np.ndarray,
         bucket_ns: int) -> Bars:  # fmt: skip
    """`aggregate` over columns, for one bucket width (`bars_by_width` for several)."""
    return bars_by_width(time_ns, symbol, price, volume, {"": bucket_ns})[""]


def bars_by_width(time_ns: np.ndarray, symbol: pa.Array, price: np.ndarray, volume: np.ndarray,
                  widths: Mapping[str, int]) -> dict[str, Bars]:  # fmt: skip
    """`aggregate` over columns for every named bucket width, from one stable sort by (symbol,
    time): a bucket is a function of the time that never decreases with it, so that order is
    also (symbol, bucket, time) for every width. Each group's first row is its open (earliest
    time, first of equal times in input order, as `aggregate`) and its last row its close
    (latest time, last of equal times)."""
    if len(time_ns) == 0:
        none = np.empty(0, np.int64)
        nothing = np.empty(0, np.float64)
        empty = Bars(none, pa.array([], pa.string()), nothing, nothing, nothing, nothing,
                     none, none, none)  # fmt: skip
        return dict.fromkeys(widths, empty)
    encoded = pc.dictionary_encode(symbol).combine_chunks() if isinstance(
        symbol, pa.ChunkedArray) else pc.dictionary_encode(symbol)  # fmt: skip
    names = encoded.dictionary
    # Codes in the symbols' sort order, so groups come out sorted by symbol text.
    by_text = pc.sort_indices(names).to_numpy()
    rank = np.empty(len(names), np.int64)
    rank[by_text] = np.arange(len(names))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    order = np.lexsort((time_ns, codes))  # last key first; lexsort is stable
    c, t = codes[order], time_ns[order]
    p, v = price[order], volume[order]
    new_symbol = np.r_[True, c[1:] != c[:-1]]
    out: dict[str, Bars] = {}
    for view, width in widths.items():
        b = t - t % width
        starts = np.flatnonzero(new_symbol | np.r_[True, b[1:] != b[:-1]])
        ends = np.r_[starts[1:], len(order)] - 1
        out[view] = Bars(
            bucket_ns=b[starts],
            symbol=names.take(pa.array(by_text[c[starts]])),
            open=p[starts],
            high=np.maximum.reduceat(p, starts),
            low=np.minimum.reduceat(p, starts),
            close=p[ends],
            volume=np.add.reduceat(v, starts),
            open_ns=t[starts],
            close_ns=t[ends],
        )
    return out


# TimescaleDB mode: each continuous aggregate's refresh policy covers [now - start, now - end)
# (migrations/0003_rollups.timescaledb.sql). A bucket older than `start` is never refreshed by
# its policy: a late tick there reaches the bars only through an explicit refresh.
POLICY_START_NS: dict[str, int] = {
    "tick_1min": 3 * 60 * NS_PER_MINUTE,
    "tick_5min": 24 * 60 * NS_PER_MINUTE,
    "tick_1hour": 7 * 24 * 60 * NS_PER_MINUTE,
}
NS_PER_DAY = 24 * 60 * NS_PER_MINUTE
# Retention must keep every day a policy may recompute, or a refresh would rebuild bars from
# raw rows that retention already dropped (and the bars would lose them).
MIN_RETENTION_DAYS_WITH_POLICIES = POLICY_START_NS["tick_1hour"] // NS_PER_DAY + 1


def late_windows(
    times_ns: np.ndarray,
    now_ns: int,
    retention_days: int,
    rollups: Mapping[str, int] = ROLLUPS,
) -> dict[str, tuple[int, int]]:
    """The bucket range [start, end) each continuous aggregate must refresh for a flush's tick
    times: only the buckets of ticks older than that aggregate's policy window (the policy
    refreshes the rest), and never a bucket retention may have dropped rows of (older than
    `retention_days`, when set: its bar would be rebuilt from what is left). `rollups`: the
    views of the rows' kind (view -> bucket width)."""
    if not len(times_ns):
        return {}
    floor = None if retention_days <= 0 else now_ns - retention_days * NS_PER_DAY
    out: dict[str, tuple[int, int]] = {}
    for view, width in rollups.items():
        horizon = now_ns - POLICY_START_NS[view]
        late = times_ns[times_ns < horizon]
        if floor is not None:  # whole buckets younger than the retention floor only
            late = late[late - late % width >= floor]
        if not len(late):
            continue
        first, last = int(late.min()), int(late.max())
        out[view] = (first - first % width, last - last % width + width)
    return out


def merge_windows(
    pending: dict[str, tuple[int, int]], more: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """One range per aggregate covering both (refreshes are batched, not one per flush)."""
    out = dict(pending)
    for view, (start, end) in more.items():
        have = out.get(view)
        out[view] = (start, end) if have is None else (min(have[0], start), max(have[1], end))
    return out
