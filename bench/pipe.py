"""The pipe ceiling: the zero-work recorder — the recorder's own Kafka client fetching the
backlog while, as records arrive, pre-encoded rows go out by binary COPY (and pre-encoded
Parquet files by PUT), concurrently, in one process and one event loop, no decode.

Owns what the pipe does and when its clock runs; `released` (which pre-encoded pieces the
records fetched so far pay for) is pure and unit-tested.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import pyarrow as pa

from bench import workload as wl
from bench.peers.cpu import machine_busy, process_cpu
from bench.stack import Stack
from recorder.core.columns import empty
from recorder.core.kinds import kind_of
from recorder.core.offsets import TP
from recorder.kafka.options import client_options
from recorder.kafka.source import KafkaSource
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.parquet import write_parquet
from recorder.sinks.lake.store import make_lake
from recorder.sinks.timescale.encode import copy_bytes

Timeline = list[tuple[float, float]]
COPY_ROWS = 10_000  # rows a COPY, as ceiling (a); the recorder's flushes under a backlog group
# its 1,000-row partition batches into pieces of this order (~13,700 rows a flush measured)
FILE_ROWS = 10_000  # S3_BATCH_SIZE's default: rows a Parquet file
LIMIT_S = 1800.0


def released(arrived: int, ends: Sequence[int]) -> int:
    """How many pieces of one kind the records fetched so far pay for: piece i holds that
    kind's records [ends[i-1], ends[i]), so it may go once `arrived` >= ends[i]."""
    return bisect_right(ends, arrived)


def piece_ends(rows: int, size: int) -> list[int]:
    """Cumulative ends of `rows` records cut into pieces of `size` (the last one shorter)."""
    return [min(i + size, rows) for i in range(0, rows, size)]


@dataclass
class Pieces:
    """Pre-encoded work of one kind, in order: `ends[i]` records of the kind pay for piece i."""

    ends: list[int] = field(default_factory=list)
    copies: list[bytes] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)


def pre_encode(kind: TopicKind, tables: Sequence[pa.Table], lake: bool) -> Pieces:
    """The recorder's own encoders (binary COPY stream, snappy Parquet) over the decoded
    backlog, before any clock runs. COPY pieces and files are both COPY_ROWS = FILE_ROWS."""
    whole = pa.concat_tables(tables) if tables else empty(kind)
    out = Pieces(ends=piece_ends(whole.num_rows, COPY_ROWS))
    start = 0
    for end in out.ends:
        part = whole.slice(start, end - start)
        out.copies.append(copy_bytes(part, kind))
        if lake:
            buf = io.BytesIO()
            write_parquet(buf, kind, part, "ns", "typed", 50_000)
            out.files.append(buf.getvalue())
        start = end
    return out


@dataclass
class PipeResult:
    records: int
    seconds: float
    cpu_seconds: float
    line: Timeline
    machine_cores: float  # cores the whole machine kept busy over the pipe's window

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_seconds / self.records * 1e6


async def pipe(
    stack: Stack,
    topics: wl.Topics,
    total: int,
    pieces: dict[TopicKind, Pieces],
    *,
    lake: bool,
    database: str,
    connections: int,
) -> PipeResult:
    """Fetch `topics` from offset 0 with the recorder's KafkaSource (its consumer settings,
    group membership and fetch wrapper: recorder/kafka/source.py, recorder/kafka/options.py) and,
    as records arrive, COPY the pieces they pay for on `connections` connections (and PUT
    their Parquet files when `lake`). Clock: from the first record fetched to the last
    COPY/PUT done. CPU: this process (the pipe alone runs in it meanwhile)."""
    bucket, group = wl.unique("bpb"), wl.unique("bpg")
    if lake:
        await wl.create_bucket(stack, bucket)
    env = wl.recorder_env(
        stack, topics, database=database, bucket=bucket, group=group,
        FETCH_MAX_RECORDS=5000, DB_WRITE_WORKERS=connections,
    )  # fmt: skip
    settings = wl.settings_for(env)
    kinds = {topics.tick: TopicKind.TICK}
    if topics.book:
        kinds[topics.book] = TopicKind.ORDERBOOK
    source = KafkaSource(settings, client_options(settings), 0)
    want = len(kinds) * wl.PARTITIONS
    assigned = asyncio.Event()

    async def on_assigned(tps: set[TP]) -> None:
        for tp in tps:  # the topics were made for this run: every partition starts at 0
            source.seek(tp, 0)
        if len(source.assignment()) >= want:
            assigned.set()

    async def on_revoked(_: set[TP]) -> None:
        return None

    pool = await asyncpg.create_pool(
        min_size=connections, max_size=connections, **wl.dsn_kwargs(stack, database)
    )
    assert pool is not None
    store = make_lake(settings)
    if lake:
        await store.start()
    copy_q: asyncio.Queue[tuple[str, tuple[str, ...], bytes, int] | None] = asyncio.Queue()
    put_q: asyncio.Queue[tuple[str, bytes, int] | None] = asyncio.Queue()
    line: Timeline = []  # (seconds since the first record, records in every store so far)
    t0 = 0.0
    copied = put = 0

    def progress() -> None:
        line.append((time.monotonic() - t0, min(copied, put) if lake else copied))

    async def copier() -> None:
        nonlocal copied
        async with pool.acquire() as conn:
            while (job := await copy_q.get()) is not None:
                table, cols, data, rows = job
                async with conn.transaction():
                    await conn.copy_to_table(
                        table, source=io.BytesIO(data), columns=list(cols), format="binary"
                    )
                copied += rows
                progress()

    async def putter() -> None:
        nonlocal put
        while (job := await put_q.get()) is not None:
            key, data, rows = job
            await store.put_file(key, io.BytesIO(data), len(data))
            put += rows
            progress()

    gc.collect()
    gc.freeze()  # the decoded backlog's millions of objects stay out of the pipe's collections
    try:
        await source.start(on_revoked, on_assigned)
        workers = [asyncio.create_task(copier()) for _ in range(connections)]
        # One unrecorded file per partition (DESIGN rule 2): at most a file per partition in
        # flight, as the recorder's lake sink.
        uploaders = [asyncio.create_task(putter()) for _ in range(want if lake else 0)]
        arrived = dict.fromkeys(kinds.values(), 0)
        sent = dict.fromkeys(kinds.values(), 0)
        n = 0
        cpu0 = busy0 = 0.0
        deadline = time.monotonic() + LIMIT_S
        while n < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipe: fetched {n} of {total} records after {LIMIT_S:.0f}s")
            data = await source.fetch(250, settings.FETCH_MAX_RECORDS)
            for tp, msgs in data.items():
                if msgs:
                    arrived[kinds[tp.topic]] += len(msgs)
                    n += len(msgs)
            if n and not t0:
                t0 = time.monotonic()
                cpu0, busy0 = process_cpu(os.getpid()), machine_busy()
            for kind, got in arrived.items():
                upto = released(got, pieces[kind].ends)
                table, cols = kind_of(kind).table, kind_of(kind).db_column_names
                ends = pieces[kind].ends
                for i in range(sent[kind], upto):
                    rows = ends[i] - (ends[i - 1] if i else 0)
                    copy_q.put_nowait((table, cols, pieces[kind].copies[i], rows))
                    if lake:
                        key = f"pipe/{kind.value}/{i:06d}.parquet"
                        put_q.put_nowait((key, pieces[kind].files[i], rows))
                sent[kind] = upto
        for _ in workers:
            copy_q.put_nowait(None)
        for _ in uploaders:
            put_q.put_nowait(None)
        await asyncio.gather(*workers, *uploaders)
        seconds = time.monotonic() - t0
        cpu = process_cpu(os.getpid()) - cpu0
        busy = (machine_busy() - busy0) / seconds
        missing = {
            k: len(p.ends) - sent[k] for k, p in pieces.items() if sent.get(k) != len(p.ends)
        }
        if missing:
            raise RuntimeError(f"pipe: pieces never paid for by the fetch: {missing}")
    finally:
        gc.unfreeze()
        await source.stop()
        await pool.close()
        if lake:
            await store.close()
            await wl.drop_bucket(stack, bucket)
    return PipeResult(total, seconds, cpu, line, busy)
