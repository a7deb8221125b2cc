"""The cold path into a local directory, with JSON order book levels and microsecond times."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.fixtures.stack import RecorderEnv, TopicFactory
from tests.support.recorder_proc import RecorderProcess, produce, wait_exactly_once

pytestmark = pytest.mark.integration


async def test_local_lake_with_json_levels_and_microseconds(
    kafka_topics: TopicFactory, fresh_database: str, recorder_env: RecorderEnv, tmp_path: Path
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=4)
    lake = tmp_path / "lake"
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        LOCAL_LAKE_DIR=lake,
        PARQUET_ORDERBOOK_LEVELS="json",
        PARQUET_TIMESTAMP_UNIT="us",
        S3_BATCH_TIMEOUT_SEC=1,
        NUM_CONSUMERS=2,  # two group members in one process share the sinks
        DB_WRITE_WORKERS=2,
    )
    produce(env, "--ticks", "5000", "--orderbooks", "500")
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        wait_exactly_once(env, rec, timeout=120, interval=2)
    finally:
        rec.terminate()
    books = ds.dataset(
        str(lake / "market-data" / "orderbook"), format="parquet", partitioning="hive"
    ).to_table()
    assert books.num_rows == 500
    assert str(books.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(books.schema.field("bids").type) == "string"
    first = json.loads(books.column("bids")[0].as_py())
    assert set(first[0]) == {"price", "quantity"}
    assert not list(lake.rglob("*.tmp")), "no half-written files are left in the lake"
