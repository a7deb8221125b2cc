"""`datarecorder verify`: compare what Kafka holds with what each store holds.

Owns the after-incident check: every valid record of the topics must be in its kind's table
(`tick_data`, `orderbook`, ...) and in the Parquet lake exactly once (compared by content and
count), and every invalid one in the dead-letter topics. Reports missing and duplicated records
per store and kind.

A little over 400 lines: the reads of each store (database, Parquet lake, Iceberg tables, dead-
letter topics) and the one comparison by content belong to one report.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recorder.core.kinds import Kind, TopicKind, all_kinds, kind_of
from recorder.core.records import Limits, RecordError, Row, decode
from recorder.kafka.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_REASON, HEADER_TOPIC
from recorder.kafka.options import client_options
from recorder.runtime.settings import Settings
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.lake.parquet import LAYOUTS
from recorder.sinks.timescale.config import SINK as DB_SINK


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


def _levels(value: Any) -> Hashable:
    return _levels_key(json.loads(value) if isinstance(value, str) else value)


# A value made comparable by its column's SQL type: the database's, the lake's and the decoded
# record's forms of one value give one key (levels: JSON text, typed structs or `Level`s).
NORMALISE: dict[str, Callable[[Any], Hashable]] = {
    "text": lambda value: value,
    "double precision": lambda value: None if value is None else float(value),
    "bigint": lambda value: None if value is None else int(value),
    "jsonb": _levels,
}


def row_key(kind: Kind, time: int, values: Sequence[Any]) -> Hashable:
    """A stored or decoded row of `kind` by content: its time (in the store's unit) and its
    values after the time, in the order of the kind's table columns."""
    return (
        time,
        *(
            NORMALISE[column.sql_type](value)
            for column, value in zip(kind.db_columns[1:], values, strict=True)
        ),
    )


def tick_key(
    time_us: int, symbol: str, price: float, volume: int, change: float | None, rate: float | None
) -> Hashable:
    return row_key(kind_of(TopicKind.TICK), time_us, (symbol, price, volume, change, rate))


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
) -> tuple[dict[TopicKind, list[Row]], Counter[Hashable], list[Row]]:
    """Rows every store should hold (per kind), invalid positions (dead letters), and the rows
    the database refused (`db_refused`: positions dead-lettered with reason db_refused) — those
    belong in the dead letters and the lake, not in the database."""
    topics = settings.topics()
    records = records if records is not None else await read_topics(settings, topics)
    rows: dict[TopicKind, list[Row]] = {kind.topic_kind: [] for kind in all_kinds()}
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
            rows[kind].append(row)
    return rows, invalid, refused_rows


async def database_counters(settings: Settings) -> dict[TopicKind, Counter[Hashable]]:
    """Every row of every kind's table, by content (`row_key`, times in microseconds)."""
    conn = await asyncpg.connect(**settings.db_dsn_kwargs())
    out: dict[TopicKind, Counter[Hashable]] = {}
    try:
        epoch_us = "(extract(epoch from time) * 1000000)::bigint"
        for kind in all_kinds():
            found: Counter[Hashable] = Counter()
            out[kind.topic_kind] = found
            if await conn.fetchval("SELECT to_regclass($1::text)", kind.table) is None:
                continue  # nothing recorded yet: no schema
            values = ", ".join(
                f"{c.name}::text" if c.sql_type == "jsonb" else c.name for c in kind.db_columns[1:]
            )
            for r in await conn.fetch(f"SELECT {epoch_us} AS t, {values} FROM {kind.table}"):
                found[row_key(kind, r["t"], tuple(r)[1:])] += 1
        return out
    finally:
        await conn.close()


async def lake_tables(settings: Settings) -> dict[TopicKind, Any]:
    """Every kind's lake files, read as hive-partitioned pyarrow datasets (None: no files), or,
    with LAKE_FORMAT=iceberg, scanned from the Iceberg tables' current snapshots."""
    if settings.LAKE_FORMAT == "iceberg":
        return await asyncio.to_thread(iceberg_tables, settings)
    out: dict[TopicKind, Any] = {}
    if settings.LOCAL_LAKE_DIR is not None:
        for kind in all_kinds():
            root = settings.LOCAL_LAKE_DIR / settings.S3_PREFIX / kind.lake_segment
            out[kind.topic_kind] = (
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
        for kind in all_kinds():
            tables = []
            paginator = s3.get_paginator("list_objects_v2")
            prefix = f"{settings.S3_PREFIX.strip('/')}/{kind.lake_segment}/"
            async for page in paginator.paginate(Bucket=settings.S3_BUCKET, Prefix=prefix):
                for obj in page.get("Contents", []):
                    res = await s3.get_object(Bucket=settings.S3_BUCKET, Key=obj["Key"])
                    async with res["Body"] as stream:
                        body = await stream.read()
                    tables.append(pq.read_table(io.BytesIO(body)))
            import pyarrow as pa

            out[kind.topic_kind] = pa.concat_tables(tables) if tables else None
    return out


def iceberg_tables(settings: Settings) -> dict[TopicKind, Any]:
    """Each kind's Iceberg table as it is now (None: not created yet); nothing is created."""
    from pyiceberg.exceptions import NoSuchTableError

    tables = Tables(IcebergConfig.of(settings))
    out: dict[TopicKind, Any] = {}
    try:
        for kind in TopicKind:
            try:
                out[kind] = tables.load(kind).scan().to_arrow()
            except NoSuchTableError:
                out[kind] = None
    finally:
        tables.close()
    return out


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


def _ns(value: Any) -> int:
    return int(value.value) if hasattr(value, "value") else int(value)


async def lake_counters(settings: Settings) -> dict[TopicKind, Counter[Hashable]]:
    """Every row of every kind's lake files, by content (`row_key`, times in nanoseconds)."""
    tables = await lake_tables(settings)
    out: dict[TopicKind, Counter[Hashable]] = {}
    factor = lake_scale(settings)
    for kind in all_kinds():
        found: Counter[Hashable] = Counter()
        out[kind.topic_kind] = found
        t = tables.get(kind.topic_kind)
        if t is None:
            continue
        times = _times(t, factor)
        columns = [t.column(c.name).to_pylist() for c in LAYOUTS[kind.topic_kind]]
        for i, ts in enumerate(times):
            found[row_key(kind, ts, [c[i] for c in columns])] += 1
    return out


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
    rows, invalid, refused_rows = await expected_records(settings, db_refused=db_refused)
    stores: list[StoreReport] = []
    if settings.DB_WRITE_ENABLED:
        in_db = await database_counters(settings)
        not_in_db = {id(r) for r in refused_rows}
        for kind in all_kinds():
            want = Counter(
                row_key(kind, r.time_ns // 1000, r[1:])
                for r in rows[kind.topic_kind]
                if id(r) not in not_in_db
            )
            stores.append(compare(f"{DB_SINK}.{kind.table}", want, in_db[kind.topic_kind]))
    if settings.S3_WRITE_ENABLED:
        in_lake = await lake_counters(settings)
        scale = lake_scale(settings)
        lake = "iceberg" if settings.LAKE_FORMAT == "iceberg" else "parquet"
        for kind in all_kinds():
            want = Counter(
                row_key(kind, r.time_ns // scale * scale, r[1:]) for r in rows[kind.topic_kind]
            )
            stores.append(compare(f"{lake}.{kind.lake_segment}", want, in_lake[kind.topic_kind]))
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
