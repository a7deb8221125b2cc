"""The peers' lines of the benchmark table (pure): labels, rates, CPU per row, ratios.

Owns how a peer is described in one line: what it is, what it was given and what it skips
(bench/peers/README.md says the same at length).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.rates import rate_between


@dataclass
class PeerRun:
    label: str
    store: str
    rows: int
    seconds: float
    cpu: float  # CPU seconds of the pipeline's process over the window
    db_cpu: float | None  # of the PostgreSQL server; None where it is not on this machine
    fingerprint: tuple[object, ...] = ()
    check: str = ""
    # A lake run ends with files that wait a flush timer: its rate is then taken as
    # bench.report.drain_rate says (whole window, the curve's steady state, or not measured).
    steady: float | None = None
    rate_how: str = ""
    timed: bool = False
    # The steady-state window (shares of the rows) the rate was taken over, None: the whole
    # window; and the progress curve (seconds, rows), so a peer is compared over the same window.
    window: tuple[float, float] | None = None
    line: list[tuple[float, float]] = field(default_factory=list)
    # Commits to a table (Iceberg snapshots) over the run; None where the store has none.
    commits: int | None = None

    @property
    def rate(self) -> float | None:
        return self.steady if self.timed else self.rows / self.seconds


PG, S3 = "PostgreSQL", "Parquet/S3"
LABELS = {
    ("recorder", PG): "Recorder → PostgreSQL, ticks only (peers' reference)",
    ("Benthos", PG): "Peer: Benthos 4.27 kafka_franz → sql_insert",
    ("Kafka Connect", PG): "Peer: Kafka Connect 4.4 + Debezium JDBC sink 3.5",
    ("recorder", S3): "Recorder → Parquet on S3, ticks only (database off)",
    ("Benthos", S3): "Peer: Benthos 4.27 kafka_franz → parquet_encode → aws_s3",
    ("recorder, Iceberg", S3): "Recorder → Iceberg tables on S3, ticks only (database off)",
}
NOTES = {
    ("recorder", PG): "exactly once, validated, rollups; S3 off",
    ("Benthos", PG): "500-row batches, 4 in flight; at-least-once, no validation, no rollups",
    ("Kafka Connect", PG): "4 tasks, 500-row batches; given a JSON schema per message and "
    "pre-created partitions; at-least-once, no validation, no rollups",
    ("recorder", S3): "exactly once (progress compare-and-set), validated; 10k-row files, "
    "S3_BATCH_TIMEOUT_SEC=5",
    ("Benthos", S3): "a snappy file per partition per 10k rows or 5 s, 4 uploads in flight, "
    "timed by its committed offsets; at-least-once, no validation, no partitioned layout",
    ("recorder, Iceberg", S3): "exactly once (snapshot compare-and-swap in a SQL catalog on the "
    "same PostgreSQL), validated; a commit per table per 10k rows or 5 s, timed by the "
    "progress in the snapshots",
}


def us_per_row(seconds: float | None, rows: int) -> str:
    return "n/a" if seconds is None else f"{seconds / rows * 1e6:,.1f} µs"


def peer_rows(runs: list[PeerRun]) -> list[tuple[str, str, str, str]]:
    out = []
    for r in runs:
        base = next((b for b in runs if b.label == "recorder" and b.store == r.store), None)
        compared = ""
        if base is not None and r is not base and r.rate is not None and base.rate:
            compared = f"{r.rate / base.rate:.2f}x recorder"
            if base.window is not None and r.window != base.window:
                # The recorder's rate is a steady state: the peer's over the same window.
                lo, hi = base.window
                same = rate_between(r.line, r.rows, lo, hi)
                compared = (
                    "" if same is None else f"{same / base.rate:.2f}x recorder ({lo:.0%}→{hi:.0%})"
                )
        db = f", PostgreSQL {us_per_row(r.db_cpu, r.rows)}" if r.store == PG else ""
        commits = (
            ""
            if r.commits is None
            else f"; {r.commits:,} snapshots, {r.commits / r.seconds:.1f} commits/s over the "
            f"{r.seconds:.1f} s drain"
        )
        how = (
            f"{r.rows:,} rows, partitions assigned → last durable; CPU/row: process "
            f"{us_per_row(r.cpu, r.rows)}{db}; {NOTES.get((r.label, r.store), '')}; {r.check}"
            + (f"; rate: {r.rate_how}" if r.rate_how else "")
            + commits
        )
        label = LABELS.get((r.label, r.store), f"{r.label} → {r.store}")
        out.append((label, "—" if r.rate is None else f"{r.rate:,.0f} rec/s", compared, how))
    return out
