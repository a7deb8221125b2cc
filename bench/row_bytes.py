"""Measure the memory of buffered columns (calibrates recorder.core.columns.table_bytes).

Usage: .venv/bin/python bench/row_bytes.py   (prints a table: process RSS per buffered row and
per buffered one-row table, beside the Arrow buffers' own bytes and the estimate)
"""

from __future__ import annotations

import gc
import json

import psutil
import pyarrow as pa

from recorder.core.columns import decode_batch, table_bytes
from recorder.core.records import Limits
from recorder.runtime.settings import TopicKind

N = 10_000
TS_MS = 1_764_133_200_000


def tick(i: int) -> bytes:
    return json.dumps(
        {"symbol": f"{i % 3000:06d}", "price": 71000.0 + i, "volume": 120 + i,
         "change": 500.0, "change_rate": 0.71, "timestamp": TS_MS * 1_000_000 + i}
    ).encode()  # fmt: skip


def book(i: int, levels: int) -> bytes:
    side = [{"price": 70900.0 - j, "quantity": 1200.0 + j} for j in range(levels)]
    return json.dumps(
        {"symbol": f"{i % 3000:06d}", "timestamp": TS_MS * 1_000_000 + i, "bids": side,
         "asks": side}
    ).encode()  # fmt: skip


def measure(kind: TopicKind, values: list[bytes], per_table: int) -> tuple[float, float, float]:
    """RSS growth per row with `per_table` rows per buffered table, Arrow bytes and estimate."""
    limits = Limits(1 << 24)
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    kept: list[pa.Table] = []
    for i in range(0, len(values), per_table):
        chunk = values[i : i + per_table]
        offsets = list(range(i, i + len(chunk)))
        kept.append(decode_batch(kind, chunk, offsets, [TS_MS] * len(chunk), limits)[0])
    gc.collect()
    grown = proc.memory_info().rss - before
    arrow = sum(t.nbytes for t in kept)
    estimate = sum(table_bytes(t) for t in kept)
    return grown / len(values), arrow / len(values), estimate / len(values)


def main() -> None:
    print(f"{'buffered':<40} {'RSS B/row':>10} {'Arrow B/row':>12} {'estimate B/row':>15}")
    cases = [
        ("ticks, 1 a table", TopicKind.TICK, [tick(i) for i in range(N)], 1),
        ("ticks, 5,000 a table", TopicKind.TICK, [tick(i) for i in range(20 * N)], 5000),
    ]
    for levels in (10, 1000):
        n = N if levels < 1000 else 500
        cases.append((f"order books, {levels} a side, 500 a table", TopicKind.ORDERBOOK,
                      [book(i, levels) for i in range(n)], 500))  # fmt: skip
    for name, kind, values, per_table in cases:
        rss, arrow, estimate = measure(kind, values, per_table)
        print(f"{name:<40} {rss:>10,.0f} {arrow:>12,.0f} {estimate:>15,.0f}")


if __name__ == "__main__":
    main()
