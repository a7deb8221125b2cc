"""What `datarecorder demo` shows: progress snapshots, their one-line form, and the summary.

Owns pure logic only (metrics parsing, rates, formatting); the demo's I/O shell fills the
snapshots from Kafka, the database, the lake and the recorder's /metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from recorder.sinks.lake.config import SINK as LAKE_SINK
from recorder.sinks.timescale.config import SINK as DB_SINK


@dataclass(frozen=True)
class Snapshot:
    """Counts at one moment of the demo."""

    at: float  # seconds since the feed started
    produced: int  # records in the topics (sum of high watermarks)
    db_ticks: int
    db_books: int
    parquet_files: int
    parquet_rows: int
    lag: Mapping[str, float] = field(default_factory=dict)  # sink -> records not yet durable

    @property
    def db_rows(self) -> int:
        return self.db_ticks + self.db_books


def lag_by_sink(metrics_text: str) -> dict[str, float]:
    """`datarecorder_lag_records` per sink from a /metrics body."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "datarecorder_lag_records":
            continue
        for sample in family.samples:
            out[sample.labels.get("sink", "?")] = sample.value
    return out


def rate(prev: Snapshot | None, now: Snapshot, attr: str) -> float:
    if prev is None or now.at <= prev.at:
        return 0.0
    return float(getattr(now, attr) - getattr(prev, attr)) / (now.at - prev.at)


def progress_line(prev: Snapshot | None, now: Snapshot) -> str:
    lag = " ".join(f"{_SINK.get(k, k)} {int(v):,}" for k, v in sorted(now.lag.items())) or "-"
    return (
        f"{now.at:4.0f}s  kafka {now.produced:>8,} ({rate(prev, now, 'produced'):>5,.0f}/s)"
        f"  tick_data {now.db_ticks:>8,}  orderbook {now.db_books:>7,}"
        f" ({rate(prev, now, 'db_rows'):>5,.0f}/s)"
        f"  parquet {now.parquet_files:>3} files {now.parquet_rows:>8,} rows"
        f"  lag {lag}"
    )


_SINK = {DB_SINK: "db", LAKE_SINK: "parquet"}


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, counts: bool = False) -> str:
    """A plain text table, columns as wide as their widest cell; `counts` puts thousands
    separators in integers (for counts, not for years or prices)."""
    cells = [[_cell(v, counts) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: Any, counts: bool) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if counts else str(value)
    if hasattr(value, "isoformat"):
        return str(value.isoformat(sep=" ")) if hasattr(value, "hour") else str(value.isoformat())
    return "NULL" if value is None else str(value)


def consistency(summary: Mapping[str, Any]) -> list[str]:
    """Pure: what disagrees between produced records and each store after the final flush
    (empty when every valid record is in every store exactly once)."""
    problems = []
    produced = summary["produced"]
    ticks, books = produced.get("market.tick", 0), produced.get("market.orderbook", 0)
    if ticks + books == 0:
        problems.append("nothing was produced")
    db = summary["database"]
    lake = summary["parquet"]
    for store, got, want in (
        ("tick_data rows", db["tick_data"], ticks),
        ("orderbook rows", db["orderbook"], books),
        ("Parquet tick rows", lake["tick_rows"], ticks),
        ("Parquet orderbook rows", lake["orderbook_rows"], books),
    ):
        if got != want:
            problems.append(f"{store}: {got:,} stored, {want:,} produced")
    if not summary.get("verify", {}).get("ok", False):
        problems.append("datarecorder verify found missing or duplicated records")
    return problems
