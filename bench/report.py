"""The benchmark's numbers as one table (pure): percentiles, ratios, formatting.

Owns what the printed table says and how each figure is labelled; the run passes a `Results`
object in and prints the returned text (Markdown, so the README can take it unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.peers.table import PeerRun, peer_rows
from bench.rates import crossing, rate_between


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


Timeline = list[tuple[float, float]]  # (seconds since the clock's start, records so far)

# A rate is taken over the whole drain only when the flush timer that the last partial batches
# wait is under this share of the drain; otherwise from the progress curve's steady state.
TIMER_SHARE = 0.10
STEADY_FROM = 0.10  # the steady state starts when 10 % of the records are recorded ...
STEADY_TO = 0.90  # ... and ends at 90 %, or earlier where the timer-bound tail may begin
MIN_WINDOW = 0.5  # the steady window must hold at least half of the records
MIN_SAMPLES = 5  # and at least this many progress samples


@dataclass(frozen=True)
class Rate:
    """A measured rate, or None with the reason it could not be measured honestly; `how`
    says which way it was taken."""

    value: float | None
    how: str
    # The share of records between which a steady-state rate was taken; None: the whole drain.
    window: tuple[float, float] | None = None


def same_way(line: Sequence[tuple[float, float]], records: int, seconds: float, as_: Rate) -> float:
    """A ceiling's rate taken the way `as_` (the recorder's) was: whole, or over its window."""
    if as_.window is not None:
        steady = rate_between(line, records, *as_.window)
        if steady is not None:
            return steady
    return records / seconds


def tail_bound(counts: Sequence[int], partitions: int, batch_rows: int) -> float:
    """Upper bound of the share of records that can sit in the last partial batches, which
    wait for the flush timer: per topic, a batch of up to `batch_rows` - 1 per partition."""
    total = sum(counts)
    if not total:
        return 1.0
    return sum(min(c, partitions * (batch_rows - 1)) for c in counts) / total


def drain_rate(
    records: int,
    seconds: float | None,
    line: Sequence[tuple[float, float]],
    timer_s: float,
    tail: float,
) -> Rate:
    """The rate of a drain that ends with partial batches waiting `timer_s`: the whole drain
    when the timer is < TIMER_SHARE of it; else the steady state between STEADY_FROM and
    min(STEADY_TO, 1 - tail) of the records on the progress curve `line`; else not measured."""
    if not seconds or records <= 0:
        return Rate(None, "not measured: the drain did not finish")
    share = timer_s / seconds
    if share < TIMER_SHARE:
        return Rate(records / seconds, f"whole drain, {seconds:.1f} s (flush timer {share:.1%})")
    hi = min(STEADY_TO, 1.0 - tail)
    if hi - STEADY_FROM < MIN_WINDOW:
        return Rate(
            None,
            f"not measured: the flush timer ({timer_s:g} s) is {share:.0%} of the {seconds:.1f} s "
            f"drain and up to {tail:.0%} of the records wait for it (a partial batch per "
            "partition): a rate would measure the timer; needs a longer backlog (full run)",
        )
    t_lo = crossing(line, STEADY_FROM * records)
    t_hi = crossing(line, hi * records)
    inside = sum(1 for t, _ in line if t_lo is not None and t_hi is not None and t_lo <= t <= t_hi)
    if t_lo is None or t_hi is None or t_hi <= t_lo or inside < MIN_SAMPLES:
        return Rate(
            None,
            f"not measured: the flush timer ({timer_s:g} s) is {share:.0%} of the "
            f"{seconds:.1f} s drain and the progress curve has {inside} samples between "
            f"{STEADY_FROM:.0%} and {hi:.0%} of the records (< {MIN_SAMPLES})",
        )
    return Rate(
        (hi - STEADY_FROM) * records / (t_hi - t_lo),
        window=(STEADY_FROM, hi),
        how=f"steady state: {STEADY_FROM:.0%}→{hi:.0%} of records recorded in {t_hi - t_lo:.1f} s "
        f"(the {timer_s:g} s flush timer is {share:.0%} of the {seconds:.1f} s drain)",
    )  # fmt: skip


@dataclass
class Results:
    """Every figure of one run; None where a scenario did not run or could not be measured
    honestly (and why, in `skipped` or the figure's `*_how`)."""

    mode: str
    ticks: int
    books: int
    # The end-to-end drain with both sinks: into PostgreSQL and into the lake, each a rate
    # taken as report.drain_rate says (whole drain, or the progress curve's steady state).
    recorder_db: float | None = None
    recorder_db_how: str = ""
    recorder_s3: float | None = None
    recorder_s3_how: str = ""
    startup_s: float | None = None
    verified: str | None = None
    copy_ceiling: float | None = None
    fetch_ceiling: float | None = None
    parquet_ceiling: float | None = None
    decode_rate: float | None = None
    # The pipe ceiling (bench/pipe.py): fetch + COPY (+ PUT) at once, no decode, one process;
    # and that process's CPU per record.
    pipe_hot: float | None = None
    pipe_hot_cpu_us: float | None = None
    pipe_both: float | None = None
    pipe_both_cpu_us: float | None = None
    pipe_how: dict[str, str] = field(default_factory=dict)  # "hot"/"both": whole or window
    pipe_whole: dict[str, float] = field(default_factory=dict)  # "hot"/"both": whole run
    naive: float | None = None
    naive_sample: int = 0
    latency: Percentiles | None = None
    latency_rate: float | None = None
    latency_achieved: float | None = None
    rss_drain: int | None = None
    rss_outage: int | None = None
    outage_note: str | None = None
    scaling: dict[str, float] = field(default_factory=dict)
    scaling_how: dict[str, str] = field(default_factory=dict)
    scaling_records: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    machine: str = ""
    # The same COPY ceiling and drain on native TimescaleDB (Apache edition) hypertables.
    tsdb_copy_ceiling: float | None = None
    tsdb_recorder_db: float | None = None
    tsdb_recorder_db_how: str = ""
    tsdb_verified: str | None = None
    peers: list[PeerRun] = field(default_factory=list)
    # Hot path alone (S3_WRITE_ENABLED=false) on the same backlog, and the recorder's own CPU
    # per record (process CPU seconds / records): both sinks, hot path, ticks alone, books alone;
    # `cores`: that CPU ÷ the drain's wall time (how many cores the recorder kept busy).
    recorder_db_only: float | None = None
    recorder_db_only_how: str = ""
    cpu_us: dict[str, float] = field(default_factory=dict)
    # Every drain's CPU per record behind a cpu_us entry that is the median of repeated drains
    # (on a shared VM one drain moves by 10-30 %).
    cpu_us_runs: dict[str, list[float]] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)
    # Cores the whole machine kept busy over each drain's (and pipe's: "pipe hot", "pipe
    # both") window, of `cpus`: whether the shared cores were the limit.
    machine_cores: dict[str, float] = field(default_factory=dict)
    # Names whose cores and machine_cores are over a part of the drain (the rate's steady-state
    # window), not its whole window: which part.
    busy_window: dict[str, str] = field(default_factory=dict)
    # Names whose rate is a steady-state one too short (under a second) to read the CPU over.
    busy_unknown: set[str] = field(default_factory=set)
    cpus: int = 2

    @property
    def ceiling(self) -> float | None:
        """The lower one-stage ceiling, min(COPY, fetch): each stage alone, not a pipeline."""
        known = [v for v in (self.copy_ceiling, self.fetch_ceiling) if v]
        return min(known) if known else None

    @property
    def recorder_both(self) -> float | None:
        """Both sinks: the slower of the two stores (None when either is not measured)."""
        if self.recorder_db is None or self.recorder_s3 is None:
            return None
        return min(self.recorder_db, self.recorder_s3)

    @property
    def pipe_ratio_hot(self) -> float | None:
        return _div(self.recorder_db_only, self.pipe_hot)

    @property
    def pipe_ratio_both(self) -> float | None:
        return _div(self.recorder_both, self.pipe_both)

    @property
    def ceiling_ratio(self) -> float | None:
        return _div(self.recorder_db, self.ceiling)

    @property
    def naive_ratio(self) -> float | None:
        return _div(self.recorder_db, self.naive)


def _div(value: float | None, of: float | None) -> float | None:
    return None if value is None or not of else value / of


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} rec/s"


def mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f} MiB"


def ms(value: float) -> str:
    return f"{value:,.0f} ms"


def repeated(runs: list[float] | None) -> str:
    """How a median CPU figure was taken: its drains and their spread."""
    if not runs or len(runs) < 2:
        return ""
    each = ", ".join(f"{us:.2f}" for us in runs)
    return f"; median of {len(runs)} drains ({each} µs; spread {max(runs) / min(runs) - 1:.0%})"


def _ratio(value: float | None, of: float | None, unit: str = "x") -> str:
    if value is None or not of:
        return ""
    return f"{value / of:.2f}{unit}"


# A recorder whose process kept this many cores busy is limited by its own CPU (one event
# loop, plus the Parquet encode's thread); a machine this close to all its cores busy is the
# limit itself (the recorder shares it with Kafka, PostgreSQL, the S3 server, other jobs).
BUSY_CORES = 0.85
MACHINE_FULL = 0.9


def busy_cores(cores: float, machine: float | None, cpus: int) -> str:
    return f"process {cores:.2f} cores busy" + (
        "" if machine is None else f", machine {machine:.2f} of {cpus}"
    )


def limit(
    cores: float | None, machine: float | None = None, cpus: int = 2, stretch: str = ""
) -> str:
    """What limits a run, from how busy its process and the machine were over its window
    (`stretch`: which part of it, when not the whole)."""
    if cores is None:
        return "limit: not known (no CPU figure)"
    seen = busy_cores(cores, machine, cpus) + (f", {stretch}" if stretch else "")
    if cores >= BUSY_CORES:
        return f"limit: its own CPU, one event loop ({seen})"
    if machine is not None and machine >= MACHINE_FULL * cpus:
        return f"limit: the shared cores, all busy with it, the servers and other jobs ({seen})"
    if machine is None:
        return f"limit: not its own CPU ({seen}); the machine's was not measured"
    return (
        f"limit: neither its CPU nor the machine's was saturated ({seen}): it waits — on "
        "round trips to the stores and its own batching/backpressure"
    )


def _measured(value: float | None, how: str) -> str:
    return how if value is not None else how or "not measured"


def rows(r: Results) -> list[tuple[str, str, str, str]]:
    """(measurement, result, compared with, how and what limits it) for every figure."""
    n = f"{r.ticks:,} ticks + {r.books:,} order books"

    def stretch(name: str) -> str:
        return r.busy_window.get(name, "from its first record to every store done")

    def lim(name: str) -> str:
        if name in r.busy_unknown:
            cores = r.cores.get(name)
            seen = (
                ""
                if cores is None
                else f"; whole window: {busy_cores(cores, r.machine_cores.get(name), r.cpus)}"
            )
            return (
                "limit: not known: the rate's window is too short to read the CPU over (the "
                f"whole window counts the flush timer's idle tail{seen})"
            )
        return limit(r.cores.get(name), r.machine_cores.get(name), r.cpus, stretch(name))

    def busy(name: str) -> str:
        if name not in r.cores:
            return ""
        machine = r.machine_cores.get(name)
        of = "" if machine is None else f", the machine {machine:.2f} of {r.cpus}"
        return f"; {stretch(name)} the process kept {r.cores[name]:.2f} cores busy{of}"

    def pipe_cpu(name: str, us: float | None) -> str:
        whole = r.pipe_whole.get(name)
        return ", ".join(
            ([f"whole run {whole:,.0f} rec/s"] if whole is not None else [])
            + ([f"{us:.2f} µs CPU/rec"] if us is not None else [])
        )

    def pipe_limit(name: str, us: float | None, rate_: float | None) -> str:
        whole = r.pipe_whole.get(name)
        cores = us * whole / 1e6 if us is not None and whole else None
        return limit(cores, r.machine_cores.get(f"pipe {name}"), r.cpus)

    out: list[tuple[str, str, str, str]] = [
        (
            "Recorder drain → PostgreSQL (both sinks on)",
            rate(r.recorder_db),
            _ratio(r.recorder_db, r.ceiling, " of one-stage min"),
            f"{n}, 12 partitions each, from the first record consumed until "
            "`recorder_offsets` covers all; "
            f"{_measured(r.recorder_db, r.recorder_db_how)}; {lim('both sinks')}",
        ),
        (
            "Recorder drain → Parquet on S3 (both sinks on)",
            rate(r.recorder_s3),
            _ratio(r.recorder_s3, r.parquet_ceiling, " of encode"),
            "same drain, until every partition's lake progress covers all "
            f"(S3_BATCH_TIMEOUT_SEC=5); {_measured(r.recorder_s3, r.recorder_s3_how)}",
        ),
        (
            "Recorder, both sinks: the slower store",
            rate(r.recorder_both),
            _ratio(r.recorder_both, r.pipe_both, " of pipe (both)"),
            "min of the two rows above; "
            + ("" if r.recorder_both is not None else "not measured: a store's rate is not; ")
            + lim("both sinks"),
        ),
        (
            "Recorder drain → PostgreSQL, hot path alone",
            rate(r.recorder_db_only),
            _ratio(r.recorder_db_only, r.pipe_hot, " of hot pipe"),
            f"same backlog, S3_WRITE_ENABLED=false; "
            f"{_measured(r.recorder_db_only, r.recorder_db_only_how)}; {lim('hot path')}",
        ),
        *(
            (
                f"Recorder CPU per record, {name}",
                f"{us:.2f} µs",
                f"≈ {1e6 / us:,.0f} rec/s per core",
                "recorder process user+system CPU from its first record to every store done "
                "÷ records (servers apart): per-core capacity where the servers run elsewhere"
                + repeated(r.cpu_us_runs.get(name))
                + busy(name),
            )
            for name, us in r.cpu_us.items()
        ),
        (
            "Pipe ceiling, hot path: fetch + COPY at once",
            rate(r.pipe_hot),
            pipe_cpu("hot", r.pipe_hot_cpu_us),
            "the zero-work recorder (bench/pipe.py): the recorder's KafkaSource (same consumer "
            "settings, group, getmany(5000)) and, as records arrive, binary COPY of rows "
            "pre-encoded by the recorder's encoder, 10k rows a COPY, 4 connections; no decode, "
            "no progress rows, no rollups; first record fetched → last COPY done, "
            f"{r.pipe_how.get('hot', 'whole run')} (as the hot-path row); "
            f"{pipe_limit('hot', r.pipe_hot_cpu_us, r.pipe_hot)}",
        ),
        (
            "Pipe ceiling, both sinks: fetch + COPY + PUT at once",
            rate(r.pipe_both),
            pipe_cpu("both", r.pipe_both_cpu_us),
            "as above, plus a PUT of a pre-encoded 10k-row snappy Parquet file to the same S3 "
            "server as its records arrive (up to a file per partition in flight), no progress "
            "objects; first record fetched → last COPY and PUT done, "
            f"{r.pipe_how.get('both', 'whole run')} (as the slower store's row); "
            f"{pipe_limit('both', r.pipe_both_cpu_us, r.pipe_both)}",
        ),
        (
            "Ceiling (a), one stage: asyncpg binary COPY",
            rate(r.copy_ceiling),
            "",
            "same rows prepared in memory, same tables/indexes, 4 connections, 10k rows a COPY, "
            "nothing else running; limit: PostgreSQL's backends",
        ),
        (
            "Ceiling (b), one stage: aiokafka fetch-only",
            rate(r.fetch_ceiling),
            "",
            "same backlog, getmany(5000), no decode, nothing else running; limit: the client's "
            "per-record objects and the broker",
        ),
        (
            "Ceiling (c), one stage: Parquet encode",
            rate(r.parquet_ceiling),
            "",
            "recorder's snappy encoder, 10k-row files, one thread, no upload; limit: one core",
        ),
        (
            "Decode + validate (msgspec, into columns)",
            rate(r.decode_rate),
            "",
            "recorder's columns.decode_batch over the backlog in 5,000-record runs, one "
            "thread; limit: one core",
        ),
        (
            "Naive consumer, one INSERT per message",
            rate(r.naive),
            f"recorder {r.recorder_db / r.naive:.1f}x faster" if r.naive and r.recorder_db else "",
            f"json + autocommit INSERT, {r.naive_sample:,} messages, rate from its first "
            "message; limit: a round trip and a commit per message",
        ),
    ]
    if r.latency is not None:
        lat = r.latency
        per_partition = (r.latency_achieved or 0) / 12
        out.append(
            (
                f"Latency at {r.latency_rate or 0:,.0f} ticks/s",
                f"p50 {ms(lat.p50)} · p99 {ms(lat.p99)} · max {ms(lat.max)}",
                f"{lat.count:,} records",
                f"achieved {r.latency_achieved or 0:,.0f}/s; Kafka LogAppendTime → first 25 ms "
                "poll seeing the row's transaction; limit: batching — a partition gets "
                f"~{per_partition:,.0f} ticks/s, so a 1,000-row batch (BATCH_SIZE) fills in "
                f"~{1000 / per_partition if per_partition else 0:.1f} s (BATCH_TIMEOUT_MS=1000 "
                "caps it), then the COPY transaction",
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
    for name, how in r.scaling_how.items():
        value = r.scaling.get(name)
        out.append(
            (
                f"Scaling: {name}",
                rate(value),
                _ratio(value, base, "x of 1 worker") if base else "",
                f"hot path only (S3 off), {r.scaling_records:,} records, from the first record "
                f"consumed by any process; {how}; {lim(f'scaling {name}')} (2 cores shared by "
                "Kafka, PostgreSQL and the recorders: contention, not capacity)",
            )
        )
    if not r.scaling_how:
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
            f"same backlog and settings as the PostgreSQL drain; "
            f"{_measured(r.tsdb_recorder_db, r.tsdb_recorder_db_how)}; {how}; {r.tsdb_verified}",
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
    lines.append("")
    lines.extend(ratio_lines(r))
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def ratio_lines(r: Results) -> list[str]:
    """The headline ratios: against the pipe (what a pipeline on these cores reaches), then the
    one-stage ceiling (each stage alone, which no pipeline sharing the cores reaches)."""
    return [
        f"recorder / pipe, hot path alone: {_fmt(r.pipe_ratio_hot)}",
        f"recorder / pipe, both sinks: {_fmt(r.pipe_ratio_both)}",
        f"recorder (both sinks, → PostgreSQL) / one-stage ceiling min(COPY, fetch): "
        f"{_fmt(r.ceiling_ratio)}",
        f"recorder / naive: {_fmt(r.naive_ratio, '.1f')}{'' if r.naive_ratio is None else 'x'}",
    ]
