"""OHLCV rollups and the original service's README queries, on a known tick sequence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess, wait_until

pytestmark = pytest.mark.integration

MIN = 60 * 10**9
T0 = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp()) * 10**9

# (offset in ns from T0, symbol, price, volume); deliberately out of time order across batches
TICKS = [
    (0, "005930", 100.0, 10),
    (30 * 10**9, "005930", 105.0, 5),
    (10 * 10**9, "005930", 95.0, 1),
    (59 * 10**9, "005930", 101.0, 2),
    (MIN + 1, "005930", 110.0, 7),
    (MIN + 5 * 10**9, "000660", 50.0, 3),
    (6 * MIN, "005930", 120.0, 1),
]


async def test_rollups_and_original_queries(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3)
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        S3_WRITE_ENABLED="false",
        BATCH_SIZE=2,
        BATCH_TIMEOUT_MS=100,
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, (dt, sym, price, vol) in enumerate(TICKS):
            doc = {"symbol": sym, "price": price, "volume": vol, "timestamp": T0 + dt}
            # spread one symbol over partitions so rollups merge rows from several writers
            await producer.send_and_wait(topics[0], json.dumps(doc).encode(), partition=i % 3)
        book = {
            "symbol": "005930",
            "timestamp": T0,
            "bids": [{"price": 99.0, "quantity": 10}, {"price": 98.0, "quantity": 5}],
            "asks": [{"price": 101.0, "quantity": 7}],
        }
        await producer.send_and_wait(topics[1], json.dumps(book).encode())
    finally:
        await producer.stop()

    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:

        async def count() -> int:
            if await conn.fetchval("SELECT to_regclass('tick_data')") is None:
                return 0
            return int(
                await conn.fetchval("SELECT count(*) FROM tick_data")
                + await conn.fetchval("SELECT count(*) FROM orderbook")
            )

        for _ in range(300):
            if await count() == len(TICKS) + 1:
                break
            import asyncio

            await asyncio.sleep(0.1)
        assert await count() == len(TICKS) + 1, rec.tail()

        # the original README: latest ticks of a symbol
        latest = await conn.fetch(
            "SELECT time, symbol, price, volume FROM tick_data WHERE symbol = '005930' ORDER BY time DESC LIMIT 3"
        )
        assert [r["price"] for r in latest] == [120.0, 110.0, 101.0]

        # 1-minute OHLCV from the rollup
        bars = await conn.fetch(
            "SELECT bucket, open, high, low, close, volume FROM tick_1min WHERE symbol = '005930' ORDER BY bucket"
        )
        got = [
            (
                int(r["bucket"].timestamp()) * 10**9 - T0,
                r["open"],
                r["high"],
                r["low"],
                r["close"],
                int(r["volume"]),
            )
            for r in bars
        ]
        assert got == [
            (0, 100.0, 105.0, 95.0, 101.0, 18),
            (MIN, 110.0, 110.0, 110.0, 110.0, 7),
            (6 * MIN, 120.0, 120.0, 120.0, 120.0, 1),
        ]
        five = await conn.fetch(
            "SELECT bucket, open, high, low, close, volume FROM tick_5min WHERE symbol = '005930' ORDER BY bucket"
        )
        assert [(r["open"], r["high"], r["low"], r["close"], int(r["volume"])) for r in five] == [
            (100.0, 110.0, 95.0, 110.0, 25),
            (120.0, 120.0, 120.0, 120.0, 1),
        ]
        hour = await conn.fetchrow(
            "SELECT open, high, low, close, volume FROM tick_1hour WHERE symbol = '000660'"
        )
        assert tuple(hour.values())[:4] == (50.0, 50.0, 50.0, 50.0) and int(hour["volume"]) == 3

        # best bid / ask the original way
        best = await conn.fetchrow(
            "SELECT bids->0->>'price' AS best_bid, asks->0->>'price' AS best_ask FROM orderbook "
            "WHERE symbol = '005930' ORDER BY time DESC LIMIT 1"
        )
        assert (float(best["best_bid"]), float(best["best_ask"])) == (99.0, 101.0)
        wait_until(lambda: rec.health()[0] == 200, 10, what="healthy")
    finally:
        await conn.close()
        code, _ = rec.terminate()
    assert code == 0, rec.tail()
