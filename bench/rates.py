"""Rates read from a progress curve (pure): when a curve reaches a level, and the records per
second between two levels; shared by the table (bench/report.py) and the peers' (bench/peers).
"""

from __future__ import annotations

from collections.abc import Sequence


def crossing(line: Sequence[tuple[float, float]], level: float) -> float | None:
    """When a non-decreasing progress curve first reaches `level` (linear between samples)."""
    prev: tuple[float, float] | None = None
    for t, v in line:
        if v >= level:
            if prev is None or v == prev[1]:
                return t
            pt, pv = prev
            return pt + (t - pt) * (level - pv) / (v - pv)
        prev = (t, v)
    return None


def rate_between(
    line: Sequence[tuple[float, float]], records: int, lo: float, hi: float
) -> float | None:
    """Records per second between the curve reaching `lo` and `hi` shares of `records`."""
    t_lo, t_hi = crossing(line, lo * records), crossing(line, hi * records)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return (hi - lo) * records / (t_hi - t_lo)
