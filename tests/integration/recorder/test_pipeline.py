"""The recorder end to end on real Kafka, PostgreSQL and S3 (issue: exactly once in both stores)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aioboto3
import asyncpg
import duckdb
import pyarrow.dataset as ds
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess, produce, verify, wait_exactly_once

pytestmark = pytest.mark.integration


def _summary(report: dict[str, Any]) -> str:
    return json.dumps(report["stores"], indent=1)


async def _download_lake(s3_kwargs: dict[str, str], bucket: str, prefix: str, into: Path) -> int:
    n = 0
    async with aioboto3.Session().client("s3", **s3_kwargs) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                res = await s3.get_object(Bucket=bucket, Key=obj["Key"])
                async with res["Body"] as stream:
                    data = await stream.read()
                target = into / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                n += 1
    return n


async def test_exactly_once_in_both_stores_with_dead_letters(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=6)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        S3_BATCH_TIMEOUT_SEC=3,
        BATCH_TIMEOUT_MS=300,
        S3_PREFIX="lake",
    )
    out = produce(env, "--ticks", "100000", "--orderbooks", "10000", "--invalid-ratio", "0.01")
    sent = json.loads(out.strip().splitlines()[-1])["sent"]
    assert sent == {topics[0]: 100000, topics[1]: 10000}

    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        report = wait_exactly_once(env, rec, timeout=240)
        stores = {s["store"]: s for s in report["stores"]}
        valid_ticks = stores["timescaledb.tick_data"]["expected"]
        invalid = stores["dead_letters"]["expected"]
        assert 500 < invalid < 2000, "about 1% of 110,000 records are malformed"
        assert valid_ticks + stores["timescaledb.orderbook"]["expected"] + invalid == 110_000
        for name in (
            "timescaledb.tick_data",
            "timescaledb.orderbook",
            "parquet.tick",
            "parquet.orderbook",
        ):
            assert stores[name]["found"] == stores[name]["expected"], _summary(report)

        # /metrics parses and its counters equal what was recorded
        families = {f.name: f for f in text_string_to_metric_families(rec.metrics_text())}
        written = Counter[tuple[str, str]]()
        for s in families["datarecorder_records_written"].samples:
            if s.name.endswith("_total"):
                written[(s.labels["topic"], s.labels["sink"])] += int(s.value)
        consumed = sum(
            int(s.value)
            for s in families["datarecorder_records_consumed"].samples
            if s.name.endswith("_total")
        )
        dead = sum(
            int(s.value)
            for s in families["datarecorder_dead_letters"].samples
            if s.name.endswith("_total")
        )
        assert consumed >= 110_000  # re-deliveries after a seek are fetched (and skipped) again
        assert dead == invalid
        assert written[(topics[0], "timescaledb")] == valid_ticks
        assert written[(topics[0], "s3")] == valid_ticks
        assert written[(topics[1], "s3")] == stores["parquet.orderbook"]["expected"]
        code, body = rec.health()
        assert code == 200 and body.startswith(
            "OK\nconsumer: healthy\ntimescaledb: healthy\ns3: healthy"
        )
    finally:
        code, _ = rec.terminate()
    assert code == 0, rec.tail()

    # dead letters carry the original value and the error headers
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT symbol) AS s FROM tick_data"
        )
        assert row["n"] == valid_ticks and row["s"] == 20
    finally:
        await conn.close()

    # the lake reads back as hive-partitioned datasets in pyarrow and DuckDB
    lake = tmp_path / "lake"
    files = await _download_lake(stack.s3_client_kwargs(), fresh_bucket, "lake/", lake)
    assert files > 0
    tick_ds = ds.dataset(str(lake / "lake" / "tick"), format="parquet", partitioning="hive")
    table = tick_ds.to_table()
    assert table.num_rows == valid_ticks
    assert {"year", "month", "day", "hour"} <= set(table.column_names)
    assert str(table.schema.field("timestamp").type) == "timestamp[ns, tz=UTC]"
    con = duckdb.connect()
    n, hours = con.execute(
        f"SELECT count(*), count(DISTINCT hour) FROM read_parquet('{lake}/lake/tick/**/*.parquet', hive_partitioning=true)"
    ).fetchone()  # type: ignore[misc]
    assert n == valid_ticks and hours >= 1
    books = con.execute(
        f"SELECT bids[1].price FROM read_parquet('{lake}/lake/orderbook/**/*.parquet', hive_partitioning=true) LIMIT 1"
    ).fetchone()
    assert books is not None and books[0] > 0


async def test_sigterm_halfway_then_restart_records_everything_once(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=6)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        S3_BATCH_TIMEOUT_SEC=2,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_SIZE=3000,
        BATCH_SIZE=500,
        FETCH_MAX_RECORDS=500,
        MAX_BUFFER_SIZE=4000,
    )
    produce(env, "--ticks", "60000", "--orderbooks", "6000")
    before = {s["store"]: s for s in verify(env)["stores"]}
    assert before["timescaledb.tick_data"]["expected"] == 60000, before
    first = RecorderProcess(env, tmp_path / "first.log").start()
    conn = await asyncpg.connect(
        host=env["TIMESCALEDB_HOST"],
        port=int(env["TIMESCALEDB_PORT"]),
        user=env["TIMESCALEDB_USER"],
        password=env["TIMESCALEDB_PASSWORD"],
        database=fresh_database,
    )
    try:
        for _ in range(600):
            n = await conn.fetchval("SELECT count(*) FROM tick_data")
            if n >= 20000:
                break
            await asyncio.sleep(0.1)
        code, _ = first.terminate()
        assert code == 0, first.tail()
        halfway = await conn.fetchval("SELECT count(*) FROM tick_data")
        assert 0 < halfway < 60000, (
            "the first run must stop half-way for this test to mean anything"
        )
    finally:
        await conn.close()
    second = RecorderProcess(env, tmp_path / "second.log").start()
    try:
        report = wait_exactly_once(env, second, timeout=120)
    finally:
        code, _ = second.terminate()
    assert code == 0
    assert all(s["duplicated"] == 0 and s["missing"] == 0 for s in report["stores"]), _summary(
        report
    )
