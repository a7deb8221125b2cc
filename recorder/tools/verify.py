"""`datarecorder verify`: compare what Kafka holds with what each store holds.

Owns the after-incident check: every valid record of the topics must be in `tick_data` /
`orderbook` and in the Parquet lake exactly once (compared by content and count), and every
invalid one in the dead-letter topics. Reports missing and duplicated records per store.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recorder.core.records import Limits, OrderBookRow, RecordError, Row, TickRow, decode
from recorder.kafka.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_REASON, HEADER_TOPIC
from recorder.kafka.options import client_options
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig


@dataclass
class StoreReport:
    store: str
    expected: int
    found: int
    missing: int
    duplicated: int
    unexpected: int
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicated == 0 and self.unexpected == 0


@dataclass
class Report:
    stores: list[StoreReport]
    dead_letter_duplicates: int = 0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stores)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dead_letter_duplicates": self.dead_letter_duplicates,
            "stores": [{**s.__dict__, "ok": s.ok} for s in self.stores],
        }


def compare(store: str, expected: Counter[Hashable], found: Counter[Hashable]) -> StoreReport:
    """Pure: multiset comparison. A key found more often than produced is a duplicate; a key
    never produced is unexpected; a key found less often is missing."""
    missing = duplicated = unexpected = 0
    examples: list[str] = []
    for key, want in expected.items():
        got = found.get(key, 0)
        if got < want:
            missing += want - got
            if len(examples) < 5:
                examples.append(f"missing {key}")
        elif got > want:
            duplicated += got - want
            if len(examples) < 5:
                examples.append(f"duplicated x{got - want} {key}")
    for key, got in found.items():
        if key not in expected:
            unexpected += got
            if len(examples) < 5:
                examples.append(f"unexpected {key}")
    return StoreReport(
        store,
        sum(expected.values()),
        sum(found.values()),
        missing,
        duplicated,
        unexpected,
        examples,
    )


def _levels_key(levels: Iterable[Any]) -> tuple[tuple[float, float], ...]:
    out = []
    for level in levels:
        if isinstance(level, dict):
            out.append((float(level["price"]), float(level["quantity"])))
        else:
            out.append((float(level.price), float(level.quantity)))
    return tuple(out)


def tick_key(
    time_us: int, symbol: str, price: float, volume: int, change: float | None, rate: float | None
) -> Hashable:
    return (time_us, symbol, float(price), int(volume), change, rate)


UNKNOWN_TOPIC = 3


async def topic_partitions(
    settings: Settings, topics: Iterable[str], *, missing_ok: bool = False
) -> dict[str, list[int]]:
    """Partitions of each topic from the brokers (not a client's possibly partial cache)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        names = list(topics)
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    out: dict[str, list[int]] = {}
    for topic in described:
        if topic["error_code"] == UNKNOWN_TOPIC and missing_ok:
            continue
        if topic["error_code"] != 0:
            raise RuntimeError(
                f"topic {topic['topic']!r} cannot be read (error {topic['error_code']})"
            )
        out[topic["topic"]] = sorted(p["partition"] for p in topic["partitions"])
    missing = [n for n in names if n not in out]
    if missing and not missing_ok:
        raise RuntimeError(f"topics not found: {missing}")
    return out


async def read_topics(
    settings: Settings, topics: Iterable[str], *, missing_ok: bool = False
) -> dict[str, list[Any]]:
    """Every record of `topics` up to their end offsets at the time of the call."""
    partitions = await topic_partitions(settings, topics, missing_ok=missing_ok)
    tps = [TopicPartition(t, p) for t, parts in partitions.items() for p in parts]
    out: dict[str, list[Any]] = {t: [] for t in partitions}
    if not tps:
        return out
    # "earliest" as the default too: assign() starts a background reset with the default policy
    # ("latest"), which could otherwise finish after seek_to_beginning and read nothing.
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # What the recorder records: committed data only (aborted transactions are expected
        # in no store).
        isolation_level="read_committed",
        **client_options(settings),
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        deadline = time.monotonic() + 600
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {sorted(remaining)} did not reach the end offsets")
            data = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, msgs in data.items():
                out[tp.topic].extend(m for m in msgs if m.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def expected_records(
    settings: Settings,
    records: dict[str, list[Any]] | None = None,
    db_refused: set[Hashable] | None = None,
) -> tuple[list[TickRow], list[OrderBookRow], Counter[Hashable], list[Row]]:
    """Rows every store should hold, invalid positions (dead letters), and the rows the
    database refused (`db_refused`: positions dead-lettered with reason db_refused) — those
    belong in the dead letters and the lake, not in the database."""
    topics = settings.topics()
    records = records if records is not None else await read_topics(settings, topics)
    ticks: list[TickRow] = []
    books: list[OrderBookRow] = []
    invalid: Counter[Hashable] = Counter()
    refused_rows: list[Row] = []
    refused = db_refused or set()
    limits = Limits(settings.MAX_MESSAGE_BYTES)
    for topic, msgs in records.items():
        kind = topics[topic]
        for m in msgs:
            try:  # a function of the record alone: verify decides as the recorder did
                row = decode(kind, m.value, m.timestamp, limits)
            except RecordError:
                invalid[(topic, m.partition, m.offset)] += 1
                continue
            if (topic, m.partition, m.offset) in refused:
                invalid[(topic, m.partition, m.offset)] += 1
                refused_rows.append(row)
            if kind is TopicKind.TICK:
                ticks.append(row)  # type: ignore[arg-type]
            else:
                books.append(row)  # type: ignore[arg-type]
    return ticks, books, invalid, refused_rows


async def database_counters(settings: Settings) -> tuple[Counter[Hashable], Counter[Hashable]]:
    conn = await asyncpg.connect(**settings.db_dsn_kwargs())
    ticks: Counter[Hashable] = Counter()
    books: Counter[Hashable] = Counter()
    try:
        if await conn.fetchval("SELECT to_regclass('tick_data')") is None:
            return ticks, books  # nothing recorded yet: no schema
        epoch_us = "(extract(epoch from time) * 1000000)::bigint"
        for r in await conn.fetch(
            f"SELECT {epoch_us} AS t, symbol, price, volume, change, change_rate FROM tick_data"
        ):
            ticks[
                tick_key(
                    r["t"], r["symbol"], r["price"], r["volume"], r["change"], r["change_rate"]
                )
            ] += 1
        for r in await conn.fetch(
            f"SELECT {epoch_us} AS t, symbol, bids::text, asks::text FROM orderbook"
        ):
            books[
                (
                    r["t"],
                    r["symbol"],
                    _levels_key(json.loads(r["bids"])),
                    _levels_key(json.loads(r["asks"])),
                )
            ] += 1
        return ticks, books
    finally:
        await conn.close()


async def lake_tables(settings: Settings) -> dict[str, Any]:
    """The lake's tick and orderbook tables, read as hive-partitioned pyarrow datasets (or,
    with LAKE_FORMAT=iceberg, scanned from the Iceberg tables' current snapshots)."""
    if settings.LAKE_FORMAT == "iceberg":
        return await asyncio.to_thread(iceberg_tables, settings)
    out: dict[str, Any] = {}
    if settings.LOCAL_LAKE_DIR is not None:
        for kind in ("tick", "orderbook"):
            root = settings.LOCAL_LAKE_DIR / settings.S3_PREFIX / kind
            out[kind] = (
                ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
                if root.exists()
                else None
            )
        return out
    import aioboto3

    session = aioboto3.Session()
    async with session.client(
        "s3", region_name=settings.S3_REGION, endpoint_url=settings.S3_ENDPOINT_URL
    ) as s3:
        for kind in ("tick", "orderbook"):
            tables = []
            paginator = s3.get_paginator("list_objects_v2")
            prefix = f"{settings.S3_PREFIX.strip('/')}/{kind}/"
            async for page in paginator.paginate(Bucket=settings.S3_BUCKET, Prefix=prefix):
                for obj in page.get("Contents", []):
                    res = await s3.get_object(Bucket=settings.S3_BUCKET, Key=obj["Key"])
                    async with res["Body"] as stream:
                        body = await stream.read()
                    tables.append(pq.read_table(io.BytesIO(body)))
            import pyarrow as pa

            out[kind] = pa.concat_tables(tables) if tables else None
    return out


def iceberg_tables(settings: Settings) -> dict[str, Any]:
    """Each kind's Iceberg table as it is now (None: not created yet); nothing is created."""
    from pyiceberg.exceptions import NoSuchTableError

    tables = Tables(IcebergConfig.of(settings))
    out: dict[str, Any] = {}
    try:
        for kind in TopicKind:
            try:
                out[kind.value] = tables.load(kind).scan().to_arrow()
            except NoSuchTableError:
                out[kind.value] = None
    finally:
        tables.close()
    return out


def _ns(value: Any) -> int:
    return int(value.value) if hasattr(value, "value") else int(value)


def lake_scale(settings: Settings) -> int:
    """The lake's time resolution in ns: Parquet files keep PARQUET_TIMESTAMP_UNIT, Iceberg
    tables the exact ns (`timestamp_ns`)."""
    parquet_us = settings.LAKE_FORMAT == "parquet" and settings.PARQUET_TIMESTAMP_UNIT == "us"
    return 1000 if parquet_us else 1


def _times(table: Any, factor: int) -> list[int]:
    """Event times in ns of a lake table's rows (an Iceberg table's exact `timestamp_ns`)."""
    if "timestamp_ns" in table.column_names:
        return [int(t) for t in table.column("timestamp_ns").to_pylist()]
    return [int(t) * factor for t in table.column("timestamp").cast("int64").to_pylist()]


async def lake_counters(settings: Settings) -> tuple[Counter[Hashable], Counter[Hashable]]:
    tables = await lake_tables(settings)
    ticks: Counter[Hashable] = Counter()
    books: Counter[Hashable] = Counter()
    factor = lake_scale(settings)
    if tables.get("tick") is not None:
        t = tables["tick"]
        times = _times(t, factor)
        cols = [
            t.column(c).to_pylist() for c in ("symbol", "price", "volume", "change", "change_rate")
        ]
        for i, ts in enumerate(times):
            ticks[(ts, *(c[i] for c in cols))] += 1
    if tables.get("orderbook") is not None:
        t = tables["orderbook"]
        times = _times(t, factor)
        symbols = t.column("symbol").to_pylist()
        bids = t.column("bids").to_pylist()
        asks = t.column("asks").to_pylist()
        for i, ts in enumerate(times):
            b = json.loads(bids[i]) if isinstance(bids[i], str) else bids[i]
            a = json.loads(asks[i]) if isinstance(asks[i], str) else asks[i]
            books[(ts, symbols[i], _levels_key(b), _levels_key(a))] += 1
    return ticks, books


async def dead_letter_counter(settings: Settings) -> tuple[Counter[Hashable], set[Hashable]]:
    """Dead letters by source position, and the positions dead-lettered as db_refused."""
    topics = [settings.dlq_topic(t) for t in settings.topics()]
    records = await read_topics(settings, topics, missing_ok=True)  # created on first use
    found: Counter[Hashable] = Counter()
    refused: set[Hashable] = set()
    for msgs in records.values():
        for m in msgs:
            headers = {k: v.decode() for k, v in (m.headers or [])}
            try:
                where = (
                    headers[HEADER_TOPIC],
                    int(headers[HEADER_PARTITION]),
                    int(headers[HEADER_OFFSET]),
                )
            except (KeyError, ValueError):
                found[("?", -1, m.offset)] += 1
                continue
            found[where] += 1
            if headers.get(HEADER_REASON) == "db_refused":
                refused.add(where)
    return found, refused


async def verify(settings: Settings) -> Report:
    dead, db_refused = await dead_letter_counter(settings)
    ticks, books, invalid, refused_rows = await expected_records(settings, db_refused=db_refused)
    stores: list[StoreReport] = []
    if settings.DB_WRITE_ENABLED:
        db_ticks, db_books = await database_counters(settings)
        not_in_db = {id(r) for r in refused_rows}
        stores.append(
            compare(
                "timescaledb.tick_data",
                Counter(
                    tick_key(r.time_ns // 1000, *r[1:]) for r in ticks if id(r) not in not_in_db
                ),
                db_ticks,
            )
        )
        stores.append(
            compare(
                "timescaledb.orderbook",
                Counter(
                    (r.time_ns // 1000, r.symbol, _levels_key(r.bids), _levels_key(r.asks))
                    for r in books
                    if id(r) not in not_in_db
                ),
                db_books,
            )
        )
    if settings.S3_WRITE_ENABLED:
        lake_ticks, lake_books = await lake_counters(settings)
        scale = lake_scale(settings)
        lake = "iceberg" if settings.LAKE_FORMAT == "iceberg" else "parquet"
        stores.append(
            compare(
                f"{lake}.tick",
                Counter((r.time_ns // scale * scale, *r[1:]) for r in ticks),
                lake_ticks,
            )
        )
        stores.append(
            compare(
                f"{lake}.orderbook",
                Counter(
                    (r.time_ns // scale * scale, r.symbol, _levels_key(r.bids), _levels_key(r.asks))
                    for r in books
                ),
                lake_books,
            )
        )
    # Dead letters are at-least-once: a crash between publishing one and recording progress
    # publishes it again. Count those apart; a missing or unexpected dead letter is a failure.
    dupes = sum(n - 1 for n in dead.values() if n > 1)
    dlq = compare("dead_letters", invalid, Counter(dict.fromkeys(dead, 1)))
    stores.append(dlq)
    return Report(stores, dead_letter_duplicates=dupes)


async def main(settings: Settings, *, as_json: bool = False) -> int:
    report = await verify(settings)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(
            f"{'store':<24}{'expected':>10}{'found':>10}{'missing':>9}{'duplicated':>12}{'unexpected':>12}"
        )
        for s in report.stores:
            print(
                f"{s.store:<24}{s.expected:>10}{s.found:>10}{s.missing:>9}{s.duplicated:>12}{s.unexpected:>12}"
            )
            for ex in s.examples:
                print(f"    {ex}")
        print(f"dead-letter re-sends (at-least-once): {report.dead_letter_duplicates}")
        print("OK: every record exactly once" if report.ok else "FAILED: see above")
    return 0 if report.ok else 1
