"""LAKE_FORMAT=iceberg on the real stack: the catalog on the stack's PostgreSQL (the SQL catalog,
or Apache Iceberg's REST catalog server on it as its JDBC catalog: `iceberg_catalog`), the
warehouse on its S3. Every field as sent, the progress in the snapshot summary, hour
partitions, and two recorders of one group committing to the same tables at once, their
conflicts retried; on the REST catalog, a commit checked against an older snapshot is refused
by the server and the writer reads again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recorder.runtime.settings import TopicKind
from tests.fixtures.stack import RecorderEnv, TopicFactory
from tests.support import as_sent, iceberg
from tests.support.recorder_proc import RecorderProcess, http_get, verify

pytestmark = pytest.mark.integration

HOUR_NS = 3600 * 10**9
CONFLICTS = "datarecorder_iceberg_commit_conflicts_total"


def tables_only(env: dict[str, str]) -> dict[str, str]:
    """`env` for a recorder of the Iceberg tables alone, committing small batches often."""
    return {
        **env,
        "LAKE_FORMAT": "iceberg",
        "DB_WRITE_ENABLED": "false",
        "S3_BATCH_SIZE": "100",
        "S3_BATCH_TIMEOUT_SEC": "0.2",
    }


def metric(rec: RecorderProcess, name: str) -> float:
    text = http_get(rec.url + "/metrics", 3.0)[1]
    return sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name)
    )


async def test_ticks_and_books_are_committed_as_sent_with_their_progress(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    iceberg_catalog: dict[str, str],
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Both tables hold every record's every field as sent (exact ns in `timestamp_ns`), the
    database too; each snapshot summary's progress is the log end; files are hour partitions."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3, dlq=True)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        LAKE_FORMAT="iceberg",
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=1,
        **iceberg_catalog,
    )
    records = as_sent.corpus((topics[0], topics[1]), 3, ticks=4000, books=400)
    await as_sent.send(env["KAFKA_BROKERS"], records)
    want = as_sent.wanted(records, topics[0], topics[1])
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        await as_sent.wait_stored(env, want, [rec])
        ends = as_sent.log_ends(records)
        read = await iceberg.read(env)
        assert {(tp.topic, tp.partition): n for tp, n in read["offsets"].items()} == ends
        assert set(read["topic_ids"]) == set(topics[:2])  # the incarnation the offsets count
        for kind, files in read["files"].items():
            assert files, kind
            for f in files:
                hour = f.partition[0]  # hours since the epoch, the hour(timestamp) transform
                assert f"timestamp_hour={datetime.fromtimestamp(hour * 3600, UTC):%Y-%m-%d-%H}" in (
                    f.file_path
                )
        for kind, topic in ((TopicKind.TICK, topics[0]), (TopicKind.ORDERBOOK, topics[1])):
            sent = sum(1 for r in records if r.topic == topic)
            assert await iceberg.duckdb_rows(env, kind) == sent
        report = await asyncio.to_thread(verify, env)
        assert report["ok"], report
        assert {s["store"] for s in report["stores"]} >= {"iceberg.tick", "iceberg.orderbook"}
    finally:
        rec.terminate()


async def test_two_recorders_of_one_group_commit_at_once_exactly(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    iceberg_catalog: dict[str, str],
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Two members share the partitions and commit small batches to the same tables: commits
    race, the loser's is refused whole, re-read, re-checked and retried (counted); the tables
    end up holding every record once."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=4, dlq=True)
    env = tables_only(
        recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics, **iceberg_catalog)
    )
    first = RecorderProcess(env, tmp_path / "recorder-0.log").start()
    second = RecorderProcess(env, tmp_path / "recorder-1.log").start()
    recs = [first, second]
    try:
        records: list[as_sent.Sent] = []
        for wave in range(4):  # records keep arriving while both members commit
            more = as_sent.corpus(
                (topics[0], topics[1]), 4, ticks=2500, books=250, seed=wave, first=wave * 10_000
            )
            await as_sent.send(env["KAFKA_BROKERS"], more)
            records += more
        want = {
            "lake.tick": as_sent.expected(records, topics[0], micros=False),
            "lake.book": as_sent.expected(records, topics[1], micros=False),
        }
        await as_sent.wait_stored(env, want, recs)
        # Every partition's progress in the summary is its log end: no commit carried another
        # member's progress back to what it had read before that member's commit.
        ends = as_sent.log_ends(records)
        assert await iceberg.progress(env) == ends
        owned = [metric(r, "datarecorder_assigned_partitions") for r in recs]
        assert all(owned), f"one member owned nothing: {owned}"
        conflicts = sum(metric(r, CONFLICTS) for r in recs)
        print(f"commit conflicts: {conflicts}")
        assert conflicts > 0, "no commit ever raced: the test proves nothing"
        logs = "".join(p.log_path.read_text() for p in recs)
        assert logs.count('"iceberg_commit_conflict"') >= conflicts
    finally:
        for rec in recs:
            rec.terminate()


def compact(env: dict[str, str], hour: str) -> str:
    """`datarecorder lake compact --hour HOUR`; its report."""
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "lake", "compact", "--hour", hour],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


async def test_compacting_hours_while_recording_keeps_every_record_once(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """`lake compact` replaces an hour's many small files by one while a recorder keeps
    committing into the same hours: a compaction that loses the race is redone, so the tables
    still hold every record once, and the progress stays the log end."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2, dlq=True)
    env = tables_only(recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics))
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        records = as_sent.corpus((topics[0], topics[1]), 2, ticks=3000, books=300, seed=1)
        await as_sent.send(env["KAFKA_BROKERS"], records)
        want = as_sent.wanted(records, topics[0], topics[1])
        lake = {k: v for k, v in want.items() if k.startswith("lake.")}
        await as_sent.wait_stored(env, lake, [rec])
        hours = sorted({r.time_ns // HOUR_NS for r in records})
        before = await iceberg.read(env)
        # More records of the same hours arrive while the hours are compacted.
        more = [
            as_sent.corpus(
                (topics[0], topics[1]), 2, ticks=800, books=80, seed=wave, first=wave * 1000
            )
            for wave in range(10, 20)
        ]

        async def send_waves() -> None:  # one after another, while the compactions run
            for wave in more:
                await as_sent.send(env["KAFKA_BROKERS"], wave)

        sending = asyncio.create_task(send_waves())
        reports: list[str] = []
        while not sending.done() or not reports:  # each hour again and again, racing commits
            for h in hours:
                hour = f"{datetime.fromtimestamp(h * 3600, UTC):%Y-%m-%dT%H}"
                reports.append(await asyncio.to_thread(compact, env, hour))
        await sending
        records += [r for wave in more for r in wave]
        want = as_sent.wanted(records, topics[0], topics[1])
        await as_sent.wait_stored(env, {k: v for k, v in want.items() if k in lake}, [rec])
        assert await iceberg.progress(env) == as_sent.log_ends(records)
        assert all("->" in r for r in reports), reports
        # Once the feed is recorded, one more pass (the last waves' commits came after the racing
        # ones): each table then holds one file per hour, every record still once.
        for h in hours:
            await asyncio.to_thread(
                compact, env, f"{datetime.fromtimestamp(h * 3600, UTC):%Y-%m-%dT%H}"
            )
        await as_sent.wait_stored(env, {k: v for k, v in want.items() if k in lake}, [rec])
        assert await iceberg.progress(env) == as_sent.log_ends(records)
        first = sum(len(f) for f in before["files"].values())
        after = await iceberg.read(env)
        assert all(len(files) <= len(hours) for files in after["files"].values()), after["files"]
        assert sum(len(f) for f in after["files"].values()) <= first, reports
    finally:
        rec.terminate()


def _partitioning_and_file_buckets(env: dict[str, str]) -> tuple[str, list[tuple[int, set[int]]]]:
    """The tick table's partition spec, and per data file the bucket its partition names and
    the buckets of its rows' symbols (Iceberg's own bucket function over the rows read back)."""
    import pyarrow.parquet as pq
    from pyiceberg.transforms import BucketTransform
    from pyiceberg.types import StringType

    from recorder.sinks.iceberg.catalog import Tables
    from recorder.sinks.iceberg.config import IcebergConfig

    bucket = BucketTransform(4).transform(StringType())
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        table = tables.load(TopicKind.TICK)
        out: list[tuple[int, set[int]]] = []
        for task in table.scan().plan_files():
            with table.io.new_input(task.file.file_path).open() as f:
                symbols = pq.read_table(f, columns=["symbol"]).column("symbol").to_pylist()
            out.append((int(task.file.partition[1]), {int(bucket(s) or 0) for s in symbols}))
        return str(table.spec()), out
    finally:
        tables.close()


async def test_symbol_buckets_partition_new_tables_by_symbol_as_well(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """ICEBERG_SYMBOL_BUCKETS=4: the tables are partitioned by hour and bucket(4, symbol),
    every data file holds the rows of one bucket (the one its partition names), and every
    record is there as sent."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2, dlq=True)
    env = tables_only(
        recorder_env(
            database=fresh_database, bucket=fresh_bucket, topics=topics, ICEBERG_SYMBOL_BUCKETS=4
        )
    )
    records = as_sent.corpus((topics[0], topics[1]), 2, ticks=1500, books=150, seed=3)
    await as_sent.send(env["KAFKA_BROKERS"], records)
    want = {k: v for k, v in as_sent.wanted(records, topics[0], topics[1]).items() if "lake" in k}
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        await as_sent.wait_stored(env, want, [rec])
    finally:
        rec.terminate()
    with as_sent.aws_credentials_of(env):
        spec, files = await asyncio.to_thread(_partitioning_and_file_buckets, env)
    assert "hour(" in spec and "bucket[4](" in spec, spec
    assert len({own for own, _ in files}) > 1, files  # the rows went to several buckets
    for own, rows_buckets in files:
        assert rows_buckets == {own}, files
