"""Measure the decoded size of tick and order-book rows (calibrates recorder.core.backpressure).

Usage: .venv/bin/python bench/row_bytes.py   (prints a table: bytes per row, measured vs estimated)
"""

from __future__ import annotations

import gc
import json
import tracemalloc

from recorder.core.backpressure import row_bytes
from recorder.core.records import Limits, Row, decode
from recorder.settings import TopicKind

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


def measure(kind: TopicKind, values: list[bytes]) -> tuple[float, float]:
    limits = Limits(1 << 24)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rows: list[Row] = [decode(kind, v, TS_MS, limits) for v in values]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    estimated = sum(row_bytes(r) for r in rows) / len(rows)
    return (after - before) / len(rows), estimated


def main() -> None:
    print(f"{'rows':<28} {'measured B/row':>15} {'estimated B/row':>16}")
    cases = [("tick", TopicKind.TICK, [tick(i) for i in range(N)])]
    for levels in (10, 100, 1000):
        n = N if levels < 1000 else 500
        cases.append((f"order book, {levels} a side", TopicKind.ORDERBOOK,
                      [book(i, levels) for i in range(n)]))  # fmt: skip
    for name, kind, values in cases:
        measured, estimated = measure(kind, values)
        print(f"{name:<28} {measured:>15,.0f} {estimated:>16,.0f}")


if __name__ == "__main__":
    main()
