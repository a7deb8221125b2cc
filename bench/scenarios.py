"""The measurements: recorder drain, the three ceilings, the naive baseline, latency, memory.

Owns how each figure is taken (what is timed, from when to when); every scenario gets its own
consumer group, database and bucket, and returns plain numbers plus a timeline for the plots.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import pipe as pipe_mod
from bench import workload as wl
from bench.peers.cpu import machine_busy, process_cpu
from bench.report import Percentiles, percentiles
from bench.stack import Stack
from recorder.core.columns import decode_batch, empty
from recorder.core.records import Limits, OrderBookRow, TickRow, decode
from recorder.devstack.recorder_proc import RecorderProcess
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.parquet import write_parquet
from recorder.sinks.timescale.migrate import migrate

NS_PER_DAY = 86_400 * 1_000_000_000
POLL_S = 0.1  # how often a drain reads each store's progress (the curve's resolution)
Timeline = list[tuple[float, float]]  # (seconds since start, records durable/read so far)


@dataclass
class DrainResult:
    records: int
    db_seconds: float
    s3_seconds: float | None
    startup_seconds: float
    peak_rss: int
    db_timeline: Timeline = field(default_factory=list)
    s3_timeline: Timeline = field(default_factory=list)
    # The recorder processes' own CPU (user + system) from /ready until every store was done.
    cpu_seconds: float | None = None
    # Records already durable when the clock started (must be 0 for a true rate), and how long
    # after the first process's /ready the last one's came (processes > 1).
    durable_at_start: int = 0
    ready_spread: float = 0.0

    # The window of cpu_seconds (first record → every store done), and how many of the
    # machine's cores were busy over it (every process: recorder, servers, other jobs).
    cpu_wall: float = 0.0
    machine_cores: float | None = None
    # (seconds since the first record, the machine's busy CPU seconds, the recorder processes'
    # CPU seconds), sampled through the drain: busy figures over a rate's own window
    # (`busy_between`), since the whole window ends with partial batches idly waiting a flush
    # timer (5 s for the lake), which would read as "the recorder waits".
    cpu_line: list[tuple[float, float, float]] = field(default_factory=list)

    def busy_between(self, start: float, end: float) -> tuple[float, float] | None:
        """(recorder cores, machine cores) busy between two times of the drain (seconds since
        its first record); None when the samples cannot tell (under a second apart)."""
        inside = [c for c in self.cpu_line if start <= c[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
            return None
        first, last = inside[0], inside[-1]
        span = last[0] - first[0]
        return (last[2] - first[2]) / span, (last[1] - first[1]) / span

    @property
    def cores(self) -> float | None:
        """The recorder processes' CPU over the drain ÷ its wall time: cores they kept busy."""
        if self.cpu_seconds is None or not self.cpu_wall:
            return None
        return self.cpu_seconds / self.cpu_wall

    @property
    def cpu_us_per_record(self) -> float | None:
        if self.cpu_seconds is None or not self.records:
            return None
        return self.cpu_seconds / self.records * 1e6

    verified: str = "not checked"

    @property
    def db_rate(self) -> float:
        return self.records / self.db_seconds

    @property
    def s3_rate(self) -> float | None:
        return self.records / self.s3_seconds if self.s3_seconds else None


@dataclass
class Backlog:
    """The backlog read once by the fetch ceiling and decoded (outside any timing) for the
    COPY and Parquet ceilings: the same rows the recorder writes."""

    ticks: list[TickRow]
    books: list[OrderBookRow]
    # The recorder's own columns of the same records (fetch-sized tables), for the encode ceiling.
    tick_columns: list[pa.Table] = field(default_factory=list)
    book_columns: list[pa.Table] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.ticks) + len(self.books)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the recorder ------------------------------------------------------------------------
@dataclass
class ProfiledRecorder(RecorderProcess):
    """`datarecorder run` under pyinstrument (bench/profiled_recorder.py); the session file is
    written when the run ends."""

    session: Path | None = None

    def command(self) -> list[str]:
        assert self.session is not None
        return [sys.executable, "-m", "bench.profiled_recorder", str(self.session)]


def _cpu(proc: RecorderProcess) -> float:
    return process_cpu(proc.proc.pid) if proc.proc is not None else 0.0


async def drain(
    stack: Stack,
    topics: wl.Topics,
    total: int,
    logs: Path,
    *,
    name: str,
    processes: int = 1,
    s3: bool = True,
    verify: bool = False,
    limit_s: float = 1800,
    profile: Path | None = None,
    **settings: object,
) -> DrainResult:
    """Start recorder process(es) on an empty database and bucket with a new group; time until
    both stores hold all `total` records of the backlog."""
    database, bucket, group = wl.unique("bdb"), wl.unique("bbk"), wl.unique("bg")
    await wl.create_database(stack, database)
    await wl.create_bucket(stack, bucket)
    env = wl.recorder_env(
        stack,
        topics,
        database=database,
        bucket=bucket,
        group=group,
        S3_WRITE_ENABLED=str(s3).lower(),
        **settings,
    )
    procs: list[RecorderProcess] = []
    progress = wl.Progress(stack, topics, env)
    await progress.start()
    try:
        spawned = time.monotonic()
        for i in range(processes):
            log_path = logs / f"{name}-{i}.log"
            log_path.unlink(missing_ok=True)
            proc = (
                ProfiledRecorder(env=env, log_path=log_path, session=profile)
                if profile
                else RecorderProcess(env=env, log_path=log_path)
            )
            procs.append(proc.start(wait_ready=None))

        def ready(p: RecorderProcess) -> tuple[float, float]:
            p.wait_ready(120)
            return time.monotonic(), _cpu(p)

        # The clock starts when the FIRST record is consumed by any process (its own
        # datarecorder_records_consumed counter, polled every FIRST_POLL_S from the spawn):
        # timing from the last /ready counted the first process's head start as free (857,672
        # rec/s on 2 cores), and timing from /ready counted the group join as work.
        waits = asyncio.gather(*(asyncio.to_thread(ready, p) for p in procs))
        seen = threading.Event()
        firsts = asyncio.gather(*(asyncio.to_thread(_first_record, p, seen) for p in procs))
        raw_db: list[tuple[float, int]] = []
        raw_s3: list[tuple[float, int]] = []
        stop = asyncio.Event()

        async def poll_db() -> None:
            while not stop.is_set():
                db = await progress.database()
                if db >= 0:
                    raw_db.append((time.monotonic(), db))
                await asyncio.sleep(POLL_S)

        async def poll_lake() -> None:
            # The lake's progress is a GET per partition: polled apart from the database, so
            # a slow round of GETs does not thin out the database's curve.
            while not stop.is_set():
                lake = await progress.lake()
                raw_s3.append((time.monotonic(), lake))
                await asyncio.sleep(POLL_S)

        pollers = [asyncio.create_task(poll_db())]
        if s3:
            pollers.append(asyncio.create_task(poll_lake()))
        readies: list[tuple[float, float]] | None = None
        # (time, the machine's busy CPU seconds, the recorder processes' CPU seconds), every
        # loop: the CPU figures are taken over the same window as the rates.
        cpu_line: list[tuple[float, float, float]] = []
        try:
            while True:
                cpu_line.append((time.monotonic(), machine_busy(), sum(_cpu(p) for p in procs)))
                if time.monotonic() - spawned > limit_s:
                    raise TimeoutError(
                        f"{name}: stores not complete after {limit_s:.0f}s "
                        f"(db {raw_db[-1:]}, s3 {raw_s3[-1:]}); log: {procs[0].tail()}"
                    )
                for p in procs:
                    if not p.alive():
                        raise RuntimeError(f"{name}: recorder exited; log: {p.tail()}")
                for task in pollers:
                    if task.done():
                        task.result()  # a poller's error ends the drain
                if readies is None and waits.done():
                    readies = waits.result()
                db_full = bool(raw_db) and raw_db[-1][1] >= total
                s3_full = not s3 or (bool(raw_s3) and raw_s3[-1][1] >= total)
                if readies is not None and db_full and s3_full:
                    break
                await asyncio.sleep(POLL_S / 2)
        finally:
            stop.set()
            seen.set()
            for task in pollers:
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
        started = [t for t in await firsts if t is not None]
        if not started:
            raise RuntimeError(f"{name}: the stores filled but no recorder counted a record")
        t0 = min(started)
        # CPU from the last sample at or before the first record to the end.
        c0 = max((c for c in cpu_line if c[0] <= t0), key=lambda c: c[0], default=cpu_line[0])
        c1 = cpu_line[-1]
        cpu_done = c1[2] - c0[2]
        busy = (c1[1] - c0[1]) / (c1[0] - c0[0]) if c1[0] > c0[0] else None
        db_at = next(t for t, v in raw_db if v >= total)
        s3_at = next((t for t, v in raw_s3 if v >= total), None)
        db_done = db_at - t0
        s3_done = s3_at - t0 if s3_at is not None else None
        db_line: Timeline = [(t - t0, v) for t, v in raw_db if t >= t0]
        s3_line: Timeline = [(t - t0, v) for t, v in raw_s3 if t >= t0]
        before = [v for t, v in raw_db if t <= t0]
        before_lake = [v for t, v in raw_s3 if t <= t0]
        result = DrainResult(
            records=total,
            db_seconds=db_done,
            s3_seconds=s3_done,
            startup_seconds=t0 - spawned,
            peak_rss=0,
            db_timeline=db_line,
            s3_timeline=s3_line,
            cpu_seconds=cpu_done,
            cpu_wall=c1[0] - c0[0],
            machine_cores=busy,
            cpu_line=[(t - t0, m, c) for t, m, c in cpu_line if t >= c0[0]],
            durable_at_start=max(before[-1:] + before_lake[-1:], default=0),
            ready_spread=max(t for t, _ in readies) - min(t for t, _ in readies),
        )
        if verify:
            from recorder.tools.verify import verify as run_verify

            _log(f"{name}: verifying both stores record by record")
            report = await run_verify(wl.settings_for(env))
            for _ in range(2):
                # verify.read_topics now and then reads nothing at all (expected 0 of every
                # kind): a flake of the reader, not of the stores; read again.
                if report.ok or any(s.expected for s in report.stores):
                    break
                report = await run_verify(wl.settings_for(env))
            if not report.ok:
                raise RuntimeError(f"{name}: verify failed: {report.as_dict()}")
            result.verified = "every record exactly once (datarecorder verify)"
    finally:
        for p in procs:
            if p.alive():
                p.terminate(60)
            p.ensure_stopped()
        await progress.close()
        await wl.drop_database(stack, database)
        await wl.drop_bucket(stack, bucket)
    result.peak_rss = max(p.peak_rss for p in procs)
    return result


FIRST_POLL_S = 0.05  # how often a starting recorder's /metrics is read for its first record
CONSUMED = "datarecorder_records_consumed_total"


def records_consumed(metrics_text: str) -> float:
    """The recorder's consumed-records counter, summed over topics (0 before any)."""
    return sum(
        v
        for k, v in _metric_values(metrics_text).items()
        if k == CONSUMED or k.startswith(CONSUMED + "{")
    )


def _first_record(proc: RecorderProcess, stop: threading.Event) -> float | None:
    """When `proc` consumed its first record (monotonic; FIRST_POLL_S resolution); None if
    it had consumed none when `stop` was set (a second process that got no partitions)."""
    while not stop.is_set() and proc.alive():
        try:
            if records_consumed(proc.metrics_text()) > 0:
                return time.monotonic()
        except OSError:  # its HTTP server is not up yet
            pass
        time.sleep(FIRST_POLL_S)
    return None


# --- ceilings ----------------------------------------------------------------------------
def _consumer(stack: Stack, **kw: Any) -> AIOKafkaConsumer:
    # The recorder's fetch settings (recorder/kafka/source.py), so only the work after fetch differs.
    # auto_offset_reset="earliest": assign() starts a background reset with the default policy
    # ("latest") that can finish after seek_to_beginning and leave nothing to read.
    return AIOKafkaConsumer(
        bootstrap_servers=stack.env["KAFKA_BROKERS"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=2 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **kw,
    )


async def fetch_ceiling(
    stack: Stack, topics: wl.Topics, total: int, *, keep: bool
) -> tuple[float, Timeline, list[tuple[TopicKind, int, bytes | None]]]:
    """Fetch-only drain of the backlog with aiokafka (getmany of 5,000 like the recorder)."""
    consumer = _consumer(stack)
    await consumer.start()
    kept: list[tuple[TopicKind, int, bytes | None]] = []
    line: Timeline = []
    try:
        tps = [TopicPartition(t, p) for t in topics.names for p in range(wl.PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        kinds = {topics.tick: TopicKind.TICK, topics.book: TopicKind.ORDERBOOK}
        n = 0
        t0 = time.monotonic()
        while n < total:
            data = await consumer.getmany(timeout_ms=250, max_records=5000)
            for tp, msgs in data.items():
                n += len(msgs)
                if keep:
                    kind = kinds[tp.topic]
                    kept.extend((kind, m.timestamp, m.value) for m in msgs)
            line.append((time.monotonic() - t0, n))
            if time.monotonic() - t0 > 1800:
                raise TimeoutError(f"fetch ceiling: {n} of {total} records after 1800s")
        elapsed = time.monotonic() - t0
    finally:
        await consumer.stop()
    return n / elapsed, line, kept


FETCH_CHUNK = 5000  # the fetch ceiling's getmany(5000): what one decode_batch call sees at most


def decode_backlog(
    kept: Sequence[tuple[TopicKind, int, bytes | None]],
) -> tuple[Backlog, float]:
    """The recorder's own decode+validate of every record (recorder.core.columns.decode_batch
    over fetch-sized runs of one kind, timed); also the rows one at a time (untimed) for the
    COPY ceiling's tuples. Returns the backlog and the batch decode's records/s."""
    limits = Limits()
    ticks: list[TickRow] = []
    books: list[OrderBookRow] = []
    for kind, ts, value in kept:
        row = decode(kind, value, ts, limits)
        (ticks if kind is TopicKind.TICK else books).append(row)  # type: ignore[arg-type]
    backlog = Backlog(ticks, books)
    runs: dict[TopicKind, list[tuple[int, bytes | None]]] = {k: [] for k in TopicKind}
    for kind, ts, value in kept:
        runs[kind].append((ts, value))
    started = time.perf_counter()
    for kind, records in runs.items():
        out = backlog.tick_columns if kind is TopicKind.TICK else backlog.book_columns
        for i in range(0, len(records), FETCH_CHUNK):
            chunk = records[i : i + FETCH_CHUNK]
            values = [v for _, v in chunk]
            table, rejected = decode_batch(
                kind, values, list(range(i, i + len(chunk))), [t for t, _ in chunk], limits
            )
            if rejected:
                raise RuntimeError(f"the backlog holds invalid records: {rejected[:3]}")
            out.append(table)
    elapsed = time.perf_counter() - started
    return backlog, len(kept) / elapsed


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LEVELS = msgspec.json.Encoder()


def _copy_tuples(backlog: Backlog) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    ticks = [
        (_EPOCH + timedelta(microseconds=r.time_ns // 1000), r.symbol, r.price, r.volume,
         r.change, r.change_rate)
        for r in backlog.ticks
    ]  # fmt: skip
    books = [
        (_EPOCH + timedelta(microseconds=r.time_ns // 1000), r.symbol,
         _LEVELS.encode(r.bids).decode(), _LEVELS.encode(r.asks).decode())
        for r in backlog.books
    ]  # fmt: skip
    return ticks, books


async def fresh_schema(stack: Stack, database: str, backlog: Backlog) -> None:
    """A migrated database with the daily partitions of the backlog's event times."""
    await wl.create_database(stack, database)
    conn = await asyncpg.connect(**wl.dsn_kwargs(stack, database))
    try:
        if (await migrate(conn)).hypertables:  # TimescaleDB makes its chunks itself
            return
        days = {r.time_ns // NS_PER_DAY for r in backlog.ticks[:: max(1, len(backlog.ticks) // 50)]}
        days |= {backlog.ticks[-1].time_ns // NS_PER_DAY} if backlog.ticks else set()
        days |= {r.time_ns // NS_PER_DAY for r in backlog.books[:1] + backlog.books[-1:]}
        for table in ("tick_data", "orderbook"):
            for day in sorted(days):
                await conn.execute(
                    "SELECT recorder_ensure_partition($1, $2)",
                    table,
                    date(1970, 1, 1) + timedelta(days=day),
                )
    finally:
        await conn.close()


async def copy_ceiling(
    stack: Stack, backlog: Backlog, *, connections: int = 4, chunk: int = 10_000
) -> tuple[float, Timeline]:
    """asyncpg binary COPY of the same rows, prepared in memory beforehand, into the same
    (migrated, partitioned, indexed) tables; `connections` COPYs in flight like the writers."""
    database = wl.unique("bcp")
    await fresh_schema(stack, database, backlog)
    ticks, books = _copy_tuples(backlog)
    jobs: asyncio.Queue[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = asyncio.Queue()
    tick_cols = ("time", "symbol", "price", "volume", "change", "change_rate")
    book_cols = ("time", "symbol", "bids", "asks")
    # Interleave ticks and books in their produced proportion (10 : 1).
    book_chunk = max(1, chunk * len(books) // max(1, len(ticks)))
    bi = 0
    for ti in range(0, len(ticks), chunk):
        jobs.put_nowait(("tick_data", tick_cols, ticks[ti : ti + chunk]))
        if bi < len(books):
            jobs.put_nowait(("orderbook", book_cols, books[bi : bi + book_chunk]))
            bi += book_chunk
    for rest in range(bi, len(books), chunk):
        jobs.put_nowait(("orderbook", book_cols, books[rest : rest + chunk]))
    pool = await asyncpg.create_pool(
        min_size=connections, max_size=connections, **wl.dsn_kwargs(stack, database)
    )
    assert pool is not None
    done = 0
    line: Timeline = []
    t0 = time.monotonic()

    async def worker() -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while not jobs.empty():
                table, cols, records = jobs.get_nowait()
                async with conn.transaction():
                    await conn.copy_records_to_table(table, records=records, columns=cols)
                done += len(records)
                line.append((time.monotonic() - t0, done))

    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - t0
    finally:
        await pool.close()
        await wl.drop_database(stack, database)
    return (len(ticks) + len(books)) / elapsed, line


def parquet_ceiling(backlog: Backlog, chunk: int = 10_000) -> float:
    """The recorder's Parquet (snappy) encoder over the same rows, S3_BATCH_SIZE rows a file."""
    started = time.perf_counter()
    for kind, tables in (
        (TopicKind.TICK, backlog.tick_columns),
        (TopicKind.ORDERBOOK, backlog.book_columns),
    ):
        whole = pa.concat_tables(tables) if tables else empty(kind)
        for i in range(0, whole.num_rows, chunk):
            write_parquet(io.BytesIO(), kind, whole.slice(i, chunk), "ns", "typed", 50_000)
    return backlog.total / (time.perf_counter() - started)


# --- the pipe ceiling: fetch and write at once, no decode ---------------------------------
async def pipe_ceiling(
    stack: Stack, topics: wl.Topics, total: int, backlog: Backlog, *, lake: bool,
    connections: int = 4,
) -> pipe_mod.PipeResult:  # fmt: skip
    """bench/pipe.py's zero-work recorder into a fresh migrated database (and bucket): the
    recorder's rows pre-encoded by its own encoders before the clock starts."""
    pieces = {
        TopicKind.TICK: pipe_mod.pre_encode(TopicKind.TICK, backlog.tick_columns, lake),
        TopicKind.ORDERBOOK: pipe_mod.pre_encode(TopicKind.ORDERBOOK, backlog.book_columns, lake),
    }
    database = wl.unique("bpp")
    await fresh_schema(stack, database, backlog)
    try:
        return await pipe_mod.pipe(
            stack, topics, total, pieces, lake=lake, database=database, connections=connections
        )
    finally:
        await wl.drop_database(stack, database)


# --- the naive baseline ------------------------------------------------------------------
async def naive(stack: Stack, topics: wl.Topics, backlog: Backlog, sample: int) -> float:
    """What a team writes in an afternoon: a consumer (auto-commit) that parses each message
    with json and INSERTs it (autocommit, one statement per message). Timed from its first
    message over `sample` messages; the rate extrapolates to any backlog size."""
    database = wl.unique("bnv")
    await fresh_schema(stack, database, backlog)
    conn = await asyncpg.connect(**wl.dsn_kwargs(stack, database))
    consumer = AIOKafkaConsumer(
        *topics.names,
        bootstrap_servers=stack.env["KAFKA_BROKERS"],
        group_id=wl.unique("bnaive"),
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    await consumer.start()
    n = 0
    t0 = 0.0
    try:
        async for msg in consumer:
            if n == 0:
                t0 = time.monotonic()
            doc = json.loads(msg.value)
            ts = datetime.fromtimestamp(doc["timestamp"] / 1e9, tz=UTC)
            if msg.topic == topics.tick:
                await conn.execute(
                    "INSERT INTO tick_data (time, symbol, price, volume, change, change_rate) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    ts, doc["symbol"], doc["price"], doc["volume"], doc.get("change"),
                    doc.get("change_rate"),
                )  # fmt: skip
            else:
                await conn.execute(
                    "INSERT INTO orderbook (time, symbol, bids, asks) VALUES ($1, $2, $3, $4)",
                    ts, doc["symbol"], json.dumps(doc["bids"]), json.dumps(doc["asks"]),
                )  # fmt: skip
            n += 1
            if n >= sample:
                break
        elapsed = time.monotonic() - t0
    finally:
        await consumer.stop()
        await conn.close()
        await wl.drop_database(stack, database)
    return n / elapsed


# --- latency -----------------------------------------------------------------------------
@dataclass
class LatencyResult:
    rate_target: float
    rate_achieved: float
    records: int
    stats: Percentiles
    samples_ms: list[float]
    peak_rss: int


async def latency(
    stack: Stack, logs: Path, *, rate: float, duration: float, poll: float = 0.025
) -> LatencyResult:
    """Ticks at `rate`/s for `duration` s into a fresh topic while a recorder (BATCH_TIMEOUT_MS
    =1000) writes them. Per record: visible time minus Kafka append time (LogAppendTime), where
    visible = the first poll (every `poll` s) of `recorder_offsets` that shows the partition's
    progress past the record's offset; that row commits in the same transaction as the COPY."""
    topics = wl.Topics(wl.unique("market.tick.blat"), None)
    await wl.create_topics(stack, topics)
    database, bucket, group = wl.unique("bldb"), wl.unique("blbk"), wl.unique("blg")
    await wl.create_database(stack, database)
    await wl.create_bucket(stack, bucket)
    env = wl.recorder_env(
        stack, topics, database=database, bucket=bucket, group=group, BATCH_TIMEOUT_MS=1000
    )
    proc = RecorderProcess(env=env, log_path=logs / "latency.log")
    changes: dict[int, tuple[list[float], list[int]]] = {}
    progress = wl.Progress(stack, topics, env)
    try:
        await asyncio.to_thread(proc.start, wait_ready=120)
        await _wait_assigned(proc, wl.PARTITIONS)
        await progress.database()  # opens the connection the poller reuses
        stop = asyncio.Event()

        async def poller() -> None:
            while not stop.is_set():
                seen_at = time.time() * 1000
                for (_, part), off in (await progress.per_partition()).items():
                    times, offs = changes.setdefault(part, ([], []))
                    if not offs or off != offs[-1]:
                        times.append(seen_at)
                        offs.append(off)
                await asyncio.sleep(poll)

        task = asyncio.create_task(poller())
        _, produced_for = await wl.paced_ticks(stack, topics.tick, rate, duration)
        ends = await wl.end_offsets(stack, topics)
        total = sum(ends.values())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(changes.get(p, ([], [0]))[1][-1] >= e for (_, p), e in ends.items() if e):
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        samples = await _latencies(stack, topics, changes)
    finally:
        proc.ensure_stopped() if not proc.alive() else proc.terminate(60)
        await progress.close()
        await wl.drop_database(stack, database)
        await wl.drop_bucket(stack, bucket)
        await wl.delete_topics(stack, [*topics.names, *(f"{t}.dlq" for t in topics.names)])
    if len(samples) < total:
        raise RuntimeError(f"latency: only {len(samples)} of {total} records became visible")
    return LatencyResult(
        rate, total / produced_for, total, percentiles(samples), samples, proc.peak_rss
    )


async def _wait_assigned(proc: RecorderProcess, partitions: int, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for line in proc.metrics_text().splitlines():
            if (
                line.startswith("datarecorder_assigned_partitions ")
                and float(line.split()[1]) >= partitions
            ):
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"recorder not assigned {partitions} partitions; log: {proc.tail()}")


async def _latencies(
    stack: Stack, topics: wl.Topics, changes: dict[int, tuple[list[float], list[int]]]
) -> list[float]:
    """Visible time minus append time of every record (ms)."""
    consumer = _consumer(stack)
    await consumer.start()
    out: list[float] = []
    try:
        tps = [TopicPartition(topics.tick, p) for p in range(wl.PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        want = sum(ends.values())
        n = 0
        deadline = time.monotonic() + 300
        while n < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"latency: read {n} of {want} records back from Kafka")
            data = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, msgs in data.items():
                times, offs = changes.get(tp.partition, ([], []))
                for m in msgs:
                    n += 1
                    i = bisect_right(offs, m.offset)  # first poll with next_offset > offset
                    if i < len(offs):
                        out.append(times[i] - m.timestamp)
    finally:
        await consumer.stop()
    return out


# --- memory with the database down -------------------------------------------------------
@dataclass
class OutageResult:
    peak_rss: int
    buffered: int
    paused: bool
    resumed: bool


async def outage_memory(
    stack: Stack, topics: wl.Topics, logs: Path, *, hold: float = 20.0
) -> OutageResult:
    """A large backlog while PostgreSQL is stopped: the buffers must stop at MAX_BUFFER_SIZE
    (consumer paused) and RSS stay flat; after PostgreSQL returns the recorder resumes."""
    database, bucket, group = wl.unique("bodb"), wl.unique("bobk"), wl.unique("bog")
    await wl.create_database(stack, database)
    await wl.create_bucket(stack, bucket)
    env = wl.recorder_env(stack, topics, database=database, bucket=bucket, group=group)
    proc = RecorderProcess(env=env, log_path=logs / "outage.log")
    progress = wl.Progress(stack, topics, env)
    stopped = False
    try:
        await asyncio.to_thread(proc.start, wait_ready=120)
        # PostgreSQL stops once the recorder has taken its partitions over and is consuming:
        # stopped before, the take-over waits for the database's progress and nothing is
        # buffered (the scenario would measure a recorder that never started).
        deadline = time.monotonic() + 120
        while records_consumed(proc.metrics_text()) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"outage scenario: nothing consumed; log: {proc.tail()}")
            await asyncio.sleep(0.2)
        await asyncio.to_thread(stack.stop, "postgres")
        stopped = True
        paused_at = None
        buffered = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            m = _metric_values(proc.metrics_text())
            buffered = int(m.get('datarecorder_buffer_records{sink="timescaledb"}', 0))
            if paused_at is None and m.get("datarecorder_consumer_paused", 0) >= 1:
                paused_at = time.monotonic()
            if paused_at is not None and time.monotonic() - paused_at >= hold:
                break
            await asyncio.sleep(0.5)
        await asyncio.to_thread(stack.start, "postgres")
        stopped = False
        before = await progress.database()
        resumed = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not resumed:
            now = await progress.database()
            resumed = now > max(before, 0)
            await asyncio.sleep(0.5)
    finally:
        if stopped:
            await asyncio.to_thread(stack.start, "postgres")
        proc.terminate(60) if proc.alive() else proc.ensure_stopped()
        await progress.close()
        await wl.drop_database(stack, database)
        await wl.drop_bucket(stack, bucket)
    return OutageResult(proc.peak_rss, buffered, paused_at is not None, resumed)


def _metric_values(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out
