"""Benchmark entry point: `python bench/run.py [--quick]` on the real stack, one table out.

Owns the run's order and sizes; starts the stack when no services are given (scripts/stack,
with a lease), and in the full run writes plots to bench/out/ and copies them to docs/bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench`, `recorder`, `tests` importable
    sys.path.insert(0, str(REPO))

from bench import scenarios as sc  # noqa: E402
from bench import workload as wl  # noqa: E402
from bench.peers.scenario import run_peers  # noqa: E402
from bench.report import Rate, Results, drain_rate, render, same_way, tail_bound  # noqa: E402
from bench.stack import Stack, acquire  # noqa: E402
from recorder.core.backpressure import DEFAULT_BUFFER_BYTES  # noqa: E402
from recorder.runtime.settings import Settings  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Plan:
    ticks: int
    naive_sample: int
    latency_rate: float
    latency_seconds: float
    outage: bool
    scaling: bool
    plots: bool
    peers: tuple[str, ...] = ()
    # Drains behind each per-kind CPU-per-record row (its median): one drain's figure moves by
    # 10-30 % on a shared VM, more than the targets' margins.
    cpu_repeats: int = 1

    @property
    def books(self) -> int:
        return self.ticks // 10


# --quick runs one peer, Benthos (a Go binary that starts in a second); Kafka Connect's JVM,
# plugin load and the schema re-produce step would double the quick run's time. Both run the
# recorder's Iceberg lake (its rows checked against the Parquet lake's in the full run).
QUICK = Plan(300_000, 2_000, 20_000, 10, outage=False, scaling=False, plots=False,
             peers=("benthos", "iceberg"))  # fmt: skip
FULL = Plan(2_000_000, 20_000, 20_000, 60, outage=True, scaling=True, plots=True,
            peers=("benthos", "connect", "benthos-s3", "iceberg"), cpu_repeats=3)  # fmt: skip


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; Kafka, PostgreSQL 15 "
        f"(fsync=off) and {s3_server()} on the same machine"
    )


def s3_server() -> str:
    """Which S3 server scripts/stack runs (MinIO, or moto where MinIO is not built)."""
    state = Path(os.environ.get("DATARECORDER_STACK_DIR") or REPO / ".stack") / "s3" / "state.json"
    try:
        server = json.loads(state.read_text()).get("server")
    except (OSError, ValueError):
        return "the S3 server"
    return "MinIO S3" if server == "minio" else "moto S3"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def measure(
    stack: Stack, plan: Plan, out: Path, mode: str
) -> tuple[Results, dict[str, object]]:
    r = Results(mode=mode, ticks=plan.ticks, books=plan.books, machine=machine())
    r.cpus = os.cpu_count() or 1
    r.naive_sample = plan.naive_sample
    lines: dict[str, object] = {}
    logs = out / "logs"
    topics = wl.Topics(wl.unique("market.tick.bench"), wl.unique("market.orderbook.bench"))
    total = plan.ticks + plan.books
    await wl.create_topics(stack, topics)
    try:
        log(f"producing the backlog: {plan.ticks:,} ticks + {plan.books:,} order books")
        took = await asyncio.to_thread(
            wl.produce, stack, topics, ticks=plan.ticks, orderbooks=plan.books
        )
        log(f"produced in {took:.1f}s ({total / took:,.0f}/s)")

        log("ceiling (b): fetch-only drain")
        r.fetch_ceiling, fetch_line, kept = await sc.fetch_ceiling(stack, topics, total, keep=True)
        backlog, r.decode_rate = sc.decode_backlog(kept)
        del kept
        log("ceiling (a): binary COPY from memory")
        r.copy_ceiling, copy_line = await sc.copy_ceiling(stack, backlog)
        log("ceiling (c): Parquet encode")
        r.parquet_ceiling = await asyncio.to_thread(sc.parquet_ceiling, backlog)

        log("pipe ceiling, hot path: fetch + binary COPY at once, no decode")
        hot_pipe = await sc.pipe_ceiling(stack, topics, total, backlog, lake=False)
        r.pipe_hot_cpu_us = hot_pipe.cpu_us_per_record
        r.pipe_whole["hot"], r.machine_cores["pipe hot"] = hot_pipe.rate, hot_pipe.machine_cores
        log("pipe ceiling, both sinks: fetch + binary COPY + Parquet PUT at once")
        both_pipe = await sc.pipe_ceiling(stack, topics, total, backlog, lake=True)
        r.pipe_both_cpu_us = both_pipe.cpu_us_per_record
        r.pipe_whole["both"] = both_pipe.rate
        r.machine_cores["pipe both"] = both_pipe.machine_cores
        lines["pipe: fetch + COPY"] = hot_pipe.line

        log("recorder: end-to-end drain of the backlog")
        drain = await sc.drain(
            stack, topics, total, logs, name="drain", verify=True, S3_BATCH_TIMEOUT_SEC=5
        )
        db = db_rate(drain, plan)
        lake = lake_rate(drain, plan)
        r.recorder_db, r.recorder_db_how = db.value, db.how
        r.recorder_s3, r.recorder_s3_how = lake.value, lake.how
        if drain.cpu_us_per_record is not None:
            r.cpu_us["both sinks"] = drain.cpu_us_per_record
        slow = slower(db, lake)
        keep_cpu(
            r, "both sinks", drain, slow, drain.db_timeline if slow is db else drain.s3_timeline
        )
        r.startup_s, r.verified, r.rss_drain = drain.startup_seconds, drain.verified, drain.peak_rss
        lines |= {
            "recorder → PostgreSQL": drain.db_timeline,
            "recorder → Parquet/S3": drain.s3_timeline,
            "ceiling: binary COPY": copy_line,
            "ceiling: fetch-only": fetch_line,
        }

        hot = await hot_path(stack, topics, plan, logs, r)
        # Each pipe rate is taken the way the recorder rate it is compared with was: over the
        # whole drain, or over the same steady-state window of its own progress curve.
        r.pipe_hot = same_way(hot_pipe.line, total, hot_pipe.seconds, hot)
        r.pipe_both = same_way(both_pipe.line, total, both_pipe.seconds, slower(db, lake))
        r.pipe_how = {"hot": way(hot), "both": way(slower(db, lake))}
        await measure_timescaledb(stack, topics, plan, backlog, logs, r)
        if plan.peers:
            r.peers = await run_peers(stack, topics.tick, plan.ticks, logs, peers=list(plan.peers))
        else:
            r.skipped["peers"] = "not in this plan"

        log(f"naive baseline: {plan.naive_sample:,} messages")
        r.naive = await sc.naive(stack, topics, backlog, plan.naive_sample)
        del backlog

        log(f"latency: {plan.latency_rate:,.0f} ticks/s for {plan.latency_seconds:.0f}s")
        lat = await sc.latency(stack, logs, rate=plan.latency_rate, duration=plan.latency_seconds)
        r.latency, r.latency_rate, r.latency_achieved = (
            lat.stats,
            lat.rate_target,
            lat.rate_achieved,
        )
        lines["_latency_samples"] = lat.samples_ms

        if not plan.outage:
            r.skipped["outage"] = "full run only (stops PostgreSQL)"
        elif not stack.can_stop_services():
            r.skipped["outage"] = "skipped: external services or a stack other sessions use"
        else:
            log("memory with PostgreSQL stopped")
            o = await sc.outage_memory(stack, topics, logs)
            r.rss_outage = o.peak_rss
            r.outage_note = (
                f"backlog of {total:,}; DB buffer {o.buffered:,} records (limits: MAX_BUFFER_SIZE="
                f"{DEFAULT_BUFFER_RECORDS:,}, MAX_BUFFER_BYTES {DEFAULT_BUFFER_BYTES >> 20} MiB "
                f"derived without a memory limit), consumer {'paused' if o.paused else 'NOT paused'}, "
                f"{'resumed' if o.resumed else 'did NOT resume'} when PostgreSQL returned"
            )
            if not (o.paused and o.resumed):
                raise RuntimeError(f"outage scenario: {r.outage_note}")

        if plan.scaling:
            r.scaling_records = total
            for workers in (1, 2, 4):
                log(f"scaling: DB_WRITE_WORKERS={workers}")
                d = await sc.drain(
                    stack, topics, total, logs, name=f"w{workers}", s3=False,
                    DB_WRITE_WORKERS=workers,
                )  # fmt: skip
                scaled(r, f"DB_WRITE_WORKERS={workers}", d, plan)
            log("scaling: NUM_CONSUMERS=2 in one process")
            d = await sc.drain(stack, topics, total, logs, name="c2", s3=False, NUM_CONSUMERS=2)
            scaled(r, "NUM_CONSUMERS=2, 1 process", d, plan)
            log("scaling: 2 recorder processes")
            d = await sc.drain(stack, topics, total, logs, name="p2", s3=False, processes=2)
            scaled(r, "2 processes x 4 writers", d, plan)
        else:
            r.skipped["scaling"] = "full run only"
    finally:
        await wl.delete_topics(stack, [*topics.names, *(f"{t}.dlq" for t in topics.names)])
    return r, lines


DEFAULT_BUFFER_RECORDS: int = Settings.model_fields["MAX_BUFFER_SIZE"].default
# The recorder's defaults the drains keep (recorder/runtime/settings.py), and the bench's lake timer.
BATCH_ROWS, BATCH_TIMEOUT_S = 1000, 1.0
FILE_ROWS, FILE_TIMEOUT_S = 10_000, 5.0


def db_rate(d: sc.DrainResult, plan: Plan, counts: list[int] | None = None) -> Rate:
    """The drain's rate into PostgreSQL, whole or steady-state (report.drain_rate)."""
    tail = tail_bound(counts or [plan.ticks, plan.books], wl.PARTITIONS, BATCH_ROWS)
    return checked(d, drain_rate(d.records, d.db_seconds, d.db_timeline, BATCH_TIMEOUT_S, tail))


def lake_rate(d: sc.DrainResult, plan: Plan) -> Rate:
    tail = tail_bound([plan.ticks, plan.books], wl.PARTITIONS, FILE_ROWS)
    return checked(d, drain_rate(d.records, d.s3_seconds, d.s3_timeline, FILE_TIMEOUT_S, tail))


def keep_cpu(
    r: Results,
    name: str,
    d: sc.DrainResult,
    rate: Rate | None = None,
    line: sc.Timeline | None = None,
) -> None:
    """How busy the recorder and the machine were over a drain: what limited it. With the
    row's `rate` (and the store's progress `line` it was read from), over that rate's own
    window: the drain's whole window ends with partial batches idly waiting a flush timer."""
    cores, machine = d.cores, d.machine_cores
    if rate is not None and rate.value is not None and line:
        # A whole-drain rate ends when its own store is done (with both sinks, the other
        # store may still be waiting its timer for seconds).
        times = window_times(line, d.records, rate.window or (0.0, 1.0))
        if times is not None and rate.window is None:
            times = (0.0, times[1])
        busy = d.busy_between(*times) if times is not None else None
        if busy is not None:
            cores, machine = busy
            r.busy_window[name] = f"over the rate's window ({way(rate)})"
        else:  # the whole window's figure would count the timer's idle tail as waiting
            r.busy_unknown.add(name)
    if cores is not None:
        r.cores[name] = cores
    if machine is not None:
        r.machine_cores[name] = machine


def window_times(
    line: sc.Timeline, records: int, window: tuple[float, float]
) -> tuple[float, float] | None:
    """When a progress curve first reached each share of `records` in `window`."""
    lo, hi = window
    start = next((t for t, v in line if v >= lo * records), None)
    end = next((t for t, v in line if v >= hi * records), None)
    return None if start is None or end is None else (start, end)


def checked(d: sc.DrainResult, rate: Rate) -> Rate:
    """No rate from a clock that started after work began."""
    if d.durable_at_start:
        return Rate(None, f"not measured: {d.durable_at_start:,} records were durable before "
                    "the clock started")  # fmt: skip
    return rate


def scaled(r: Results, name: str, d: sc.DrainResult, plan: Plan) -> None:
    rate = db_rate(d, plan)
    how = rate.how
    if d.ready_spread > 0.05:
        how += f"; the second process was ready {d.ready_spread:.1f} s after the first"
    r.scaling_how[name] = how
    keep_cpu(r, f"scaling {name}", d, rate, d.db_timeline)
    if rate.value is not None:
        r.scaling[name] = rate.value


def slower(a: Rate, b: Rate) -> Rate:
    """The store that sets the pace of both sinks (a store not measured: the other)."""
    if a.value is None or b.value is None:
        return b if a.value is None else a
    return a if a.value <= b.value else b


def way(rate: Rate) -> str:
    if rate.window is None:
        return "whole run"
    lo, hi = rate.window
    return f"steady state {lo:.0%}→{hi:.0%} of its records"


async def hot_path(stack: Stack, topics: wl.Topics, plan: Plan, logs: Path, r: Results) -> Rate:
    """The hot path alone on the whole backlog, then on ticks and order books apart (for the
    CPU per record of each kind)."""
    log("recorder: hot path alone (S3_WRITE_ENABLED=false)")
    total = plan.ticks + plan.books
    d = await sc.drain(stack, topics, total, logs, name="hot", s3=False)
    hot = db_rate(d, plan)
    r.recorder_db_only, r.recorder_db_only_how = hot.value, hot.how
    if d.cpu_us_per_record is not None:
        r.cpu_us["hot path"] = d.cpu_us_per_record
    keep_cpu(r, "hot path", d, hot, d.db_timeline)
    ticks = wl.Topics(topics.tick, None)
    parts: list[tuple[str, wl.Topics, int, dict[str, object]]] = [
        ("hot path, ticks alone", ticks, plan.ticks, {"s3": False})
    ]
    if topics.book:
        parts.append(
            ("hot path, order books alone", wl.Topics(topics.book, None), plan.books, {"s3": False})
        )
    # The per-core capacity with both stores on, for ticks (the bulk of a market feed).
    parts.append(("both sinks, ticks alone", ticks, plan.ticks, {"S3_BATCH_TIMEOUT_SEC": 5}))
    # Round-robin, so a load that drifts during the run weighs on every row alike.
    runs: dict[str, list[sc.DrainResult]] = {name: [] for name, *_ in parts}
    for attempt in range(plan.cpu_repeats):
        for name, only, count, settings in parts:
            log(f"recorder: {name} ({attempt + 1} of {plan.cpu_repeats})")
            tag = "".join(word[0] for word in name.split())
            d = await sc.drain(stack, only, count, logs, name=f"cpu-{tag}-{attempt}", **settings)  # type: ignore[arg-type]
            runs[name].append(d)
    for name, drains in runs.items():
        measured = [d for d in drains if d.cpu_us_per_record is not None]
        if not measured:
            continue
        # The median drain (an odd count of repeats); the row lists every drain in run order.
        middle = sorted(measured, key=lambda d: d.cpu_us_per_record or 0.0)[len(measured) // 2]
        r.cpu_us[name] = middle.cpu_us_per_record  # type: ignore[assignment]
        r.cpu_us_runs[name] = [d.cpu_us_per_record or 0.0 for d in measured]
        keep_cpu(r, name, middle)
    return hot


def on_timescaledb(stack: Stack) -> Stack | None:
    """The stack with TIMESCALEDB_* pointing at its native TimescaleDB server (None: absent)."""
    keys = ("HOST", "PORT", "USER", "PASSWORD", "DB")
    if not all(f"TSDB_APACHE_{k}" in stack.env for k in keys):
        return None
    env = dict(stack.env) | {f"TIMESCALEDB_{k}": stack.env[f"TSDB_APACHE_{k}"] for k in keys}
    return dataclasses.replace(stack, env=env, lease=None)  # the lease stays with `stack`


async def measure_timescaledb(
    stack: Stack, topics: wl.Topics, plan: Plan, backlog: sc.Backlog, logs: Path, r: Results
) -> None:
    """Ceiling (a) and the recorder's drain again, on TimescaleDB hypertables, same run."""
    ts = on_timescaledb(stack)
    if ts is None:
        r.skipped["timescaledb"] = "no TSDB_APACHE_* server (external services)"
        return
    log("ceiling (a) on TimescaleDB: binary COPY into hypertables")
    r.tsdb_copy_ceiling, _ = await sc.copy_ceiling(ts, backlog)
    log("recorder: end-to-end drain into TimescaleDB")
    drain = await sc.drain(
        ts, topics, plan.ticks + plan.books, logs, name="drain-tsdb", verify=True,
        S3_BATCH_TIMEOUT_SEC=5,
    )  # fmt: skip
    tsdb = db_rate(drain, plan)
    r.tsdb_recorder_db, r.tsdb_recorder_db_how = tsdb.value, tsdb.how
    r.tsdb_verified = drain.verified


def write_outputs(r: Results, lines: dict[str, object], out: Path, plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(render(r) + "\n")
    data = dataclasses.asdict(r)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str))
    if not plots:
        return
    from bench import plots as pl

    samples = lines.pop("_latency_samples", [])
    made = [pl.throughput(out, lines, r.naive)]  # type: ignore[arg-type]
    if samples and r.latency is not None:
        made.append(
            pl.latency(
                out,
                samples,  # type: ignore[arg-type]
                f"Latency at {r.latency_achieved or 0:,.0f} ticks/s: p50 {r.latency.p50:.0f} ms, "
                f"p99 {r.latency.p99:.0f} ms, max {r.latency.max:.0f} ms",
            )
        )
    scaling = pl.scaling(out, r)
    if scaling:
        made.append(scaling)
    docs = REPO / "docs" / "bench"
    docs.mkdir(parents=True, exist_ok=True)
    for path in made:
        shutil.copy(path, docs / path.name)
    log(f"plots: {', '.join(str(p) for p in made)} (copied to {docs})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="about a minute: small sizes (CI)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--ticks", type=int, help="override the backlog size")
    ap.add_argument(
        "--cpu-repeats", type=int, help="drains behind each per-kind CPU row (full 3, quick 1)"
    )
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.ticks:
        plan = dataclasses.replace(plan, ticks=args.ticks)
    if args.cpu_repeats:
        plan = dataclasses.replace(plan, cpu_repeats=args.cpu_repeats)
    started = time.monotonic()
    stack = acquire()
    os.environ.update(stack.env)  # aioboto3 in this process reads the S3 credentials from here
    try:
        r, lines = asyncio.run(measure(stack, plan, args.out, "quick" if args.quick else "full"))
    finally:
        stack.release()
    write_outputs(r, lines, args.out, plan.plots)
    print()
    print(f"Benchmark ({r.mode} run, {time.monotonic() - started:.0f} s) on {r.machine}")
    print(
        f"Recorder startup (spawn → first record consumed): {r.startup_s or 0:.1f} s; check: {r.verified}"
    )
    print()
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
