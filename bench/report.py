"""The benchmark's numbers as one table (pure): percentiles, ratios, formatting.

Owns what the printed table says and how each figure is labelled; the run passes a `Results`
object in and prints the returned text (Markdown, so the README can take it unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.peers.table import PeerRun, peer_rows


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float
    p99: float
    max: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def percentiles(samples: Sequence[float]) -> Percentiles:
    ordered = sorted(samples)
    return Percentiles(
        len(ordered),
        percentile(ordered, 50),
        percentile(ordered, 99),
        float(ordered[-1]) if ordered else math.nan,
    )


@dataclass
class Results:
    """Every figure of one run; None where a scenario did not run (and why, in `skipped`)."""

    mode: str
    ticks: int
    books: int
    recorder_db: float | None = None
    recorder_s3: float | None = None
    startup_s: float | None = None
    verified: str | None = None
    copy_ceiling: float | None = None
    fetch_ceiling: float | None = None
    parquet_ceiling: float | None = None
    decode_rate: float | None = None
    naive: float | None = None
    naive_sample: int = 0
    latency: Percentiles | None = None
    latency_rate: float | None = None
    latency_achieved: float | None = None
    rss_drain: int | None = None
    rss_outage: int | None = None
    outage_note: str | None = None
    scaling: dict[str, float] = field(default_factory=dict)
    scaling_records: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    # The same COPY ceiling and drain on native TimescaleDB (Apache edition) hypertables.
    tsdb_copy_ceiling: float | None = None
    tsdb_recorder_db: float | None = None
    tsdb_verified: str | None = None
    peers: list[PeerRun] = field(default_factory=list)
    # Hot path alone (S3_WRITE_ENABLED=false) on the same backlog, and the recorder's own CPU
    # per record (process CPU seconds / records): both sinks, hot path, ticks alone, books alone.
    recorder_db_only: float | None = None
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def ceiling(self) -> float | None:
        known = [v for v in (self.copy_ceiling, self.fetch_ceiling) if v]
        return min(known) if known else None

    @property
    def ceiling_ratio(self) -> float | None:
        if self.recorder_db is None or self.ceiling is None:
            return None
        return self.recorder_db / self.ceiling

    @property
    def naive_ratio(self) -> float | None:
        if self.recorder_db is None or not self.naive:
            return None
        return self.recorder_db / self.naive


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} rec/s"


def mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f} MiB"


def ms(value: float) -> str:
    return f"{value:,.0f} ms"


def _ratio(value: float | None, of: float | None, unit: str = "x") -> str:
    if value is None or not of:
        return ""
    return f"{value / of:.2f}{unit}"


def rows(r: Results) -> list[tuple[str, str, str, str]]:
    """(measurement, result, compared with, how) for every figure of the run."""
    n = f"{r.ticks:,} ticks + {r.books:,} order books"
    out: list[tuple[str, str, str, str]] = [
        (
            "Recorder drain → PostgreSQL",
            rate(r.recorder_db),
            _ratio(r.recorder_db, r.ceiling, " of ceiling"),
            f"{n}, 12 partitions each, from /ready until `recorder_offsets` covers all",
        ),
        (
            "Recorder drain → Parquet on S3",
            rate(r.recorder_s3),
            _ratio(r.recorder_s3, r.parquet_ceiling, " of encode")
            + (
                f", {r.recorder_s3 / r.ceiling:.2f} of ceiling"
                if r.recorder_s3 and r.ceiling
                else ""
            ),
            "same run, until every partition's lake progress covers all (S3_BATCH_TIMEOUT_SEC=5)",
        ),
        (
            "Recorder drain → PostgreSQL, hot path alone",
            rate(r.recorder_db_only),
            _ratio(r.recorder_db_only, r.ceiling, " of ceiling"),
            "same backlog, S3_WRITE_ENABLED=false (target ≥ 0.7 of ceiling; both sinks ≥ 0.5)",
        ),
        *(
            (
                f"Recorder CPU per record, {name}",
                f"{us:.2f} µs",
                "",
                "recorder process user+system CPU from /ready to done ÷ records",
            )
            for name, us in r.cpu_us.items()
        ),
        (
            "Ceiling (a): asyncpg binary COPY",
            rate(r.copy_ceiling),
            "",
            "same rows prepared in memory, same tables/indexes, 4 connections, 10k rows a COPY",
        ),
        (
            "Ceiling (b): aiokafka fetch-only",
            rate(r.fetch_ceiling),
            "",
            "same backlog, getmany(5000), no decode",
        ),
        (
            "Ceiling (c): Parquet encode",
            rate(r.parquet_ceiling),
            "",
            "recorder's snappy encoder, 10k-row files, one thread, no upload",
        ),
        (
            "Decode + validate (msgspec, into columns)",
            rate(r.decode_rate),
            "",
            "recorder's columns.decode_batch over the backlog in 5,000-record runs, one thread",
        ),
        (
            "Naive consumer, one INSERT per message",
            rate(r.naive),
            f"recorder {r.recorder_db / r.naive:.1f}x faster" if r.naive and r.recorder_db else "",
            f"json + autocommit INSERT, {r.naive_sample:,} messages, rate extrapolated",
        ),
    ]
    if r.latency is not None:
        lat = r.latency
        out.append(
            (
                f"Latency at {r.latency_rate or 0:,.0f} ticks/s",
                f"p50 {ms(lat.p50)} · p99 {ms(lat.p99)} · max {ms(lat.max)}",
                f"{lat.count:,} records",
                f"achieved {r.latency_achieved or 0:,.0f}/s; Kafka LogAppendTime → first 25 ms "
                "poll seeing the row's transaction (BATCH_TIMEOUT_MS=1000)",
            )
        )
    else:
        out.append(("Latency", "—", "", r.skipped.get("latency", "")))
    out.append(("Peak RSS, drain", mib(r.rss_drain), "", "recorder process, sampled every 0.2 s"))
    out.append(
        (
            "Peak RSS, PostgreSQL stopped",
            mib(r.rss_outage),
            "",
            r.outage_note or r.skipped.get("outage", ""),
        )
    )
    base = r.scaling.get("DB_WRITE_WORKERS=1")
    for name, value in r.scaling.items():
        out.append(
            (
                f"Scaling: {name}",
                rate(value),
                _ratio(value, base, "x of 1 worker") if base and name.startswith("DB_") else "",
                f"hot path only (S3 off), {r.scaling_records:,} records; 2 cores shared by "
                "Kafka, PostgreSQL and the recorder(s): contention, not capacity",
            )
        )
    if not r.scaling:
        out.append(("Scaling", "—", "", r.skipped.get("scaling", "")))
    out.extend(timescaledb_rows(r))
    out += peer_rows(r.peers)
    if not r.peers and "peers" in r.skipped:
        out.append(("Peers (Kafka Connect, Benthos)", "—", "", r.skipped["peers"]))
    return out


def timescaledb_rows(r: Results) -> list[tuple[str, str, str, str]]:
    """The hot path on TimescaleDB hypertables beside the PostgreSQL 15 figures above."""
    if r.tsdb_copy_ceiling is None and r.tsdb_recorder_db is None:
        return [("TimescaleDB (Apache edition)", "—", "", r.skipped.get("timescaledb", ""))]
    how = "PostgreSQL 17 + TimescaleDB 2.19 (Debian trixie, fsync=off), hypertables, 1-day chunks"
    return [
        (
            "Recorder drain → TimescaleDB",
            rate(r.tsdb_recorder_db),
            _ratio(r.tsdb_recorder_db, r.recorder_db, " of PG15 drain"),
            f"same backlog and settings as the PostgreSQL drain; {how}; {r.tsdb_verified}",
        ),
        (
            "Ceiling (a) on TimescaleDB: binary COPY",
            rate(r.tsdb_copy_ceiling),
            _ratio(r.tsdb_copy_ceiling, r.copy_ceiling, " of PG15 COPY"),
            f"same rows and connections as ceiling (a); {how}",
        ),
    ]


def render(r: Results) -> str:
    """The table, then the ratio lines (always present; `n/a` when a figure is missing)."""
    table = [("Measurement", "Result", "Compared", "How"), *rows(r)]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = []
    for i, row in enumerate(table):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    ratio = r.ceiling_ratio
    naive = r.naive_ratio
    lines.append("")
    lines.append(f"recorder / ceiling: {'n/a' if ratio is None else f'{ratio:.2f}'}")
    lines.append(f"recorder / naive: {'n/a' if naive is None else f'{naive:.1f}x'}")
    return "\n".join(lines)
