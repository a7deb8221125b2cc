"""A recorder started while Kafka is down waits for it (like for the stores) instead of exiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess, produce, wait_exactly_once, wait_until

pytestmark = pytest.mark.integration


async def test_recorder_started_before_kafka_waits_then_records(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack_faults: Stack,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3)
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        S3_WRITE_ENABLED="false",
        BATCH_TIMEOUT_MS=200,
        RETRY_MAX_BACKOFF_SEC=1,
    )
    produce(env, "--ticks", "3000", "--orderbooks", "300")
    await stack_faults.astop("kafka")
    rec = RecorderProcess(env, tmp_path / "recorder.log").start(wait_ready=None)
    try:

        def waiting_for_kafka() -> bool:
            return '"what": "kafka_connect"' in rec.log_path.read_text()

        await asyncio.to_thread(wait_until, waiting_for_kafka, 30, 0.5, "a Kafka connect retry")
        await asyncio.sleep(3)
        assert rec.alive(), rec.tail()
        status, body = rec.health()
        assert status == 503 and "consumer: unhealthy" in body, body
        assert "timescaledb: healthy" in body, body
        await stack_faults.astart("kafka")
        await asyncio.to_thread(rec.wait_ready, 90)
        report = await asyncio.to_thread(wait_exactly_once, env, rec, 120)
        assert report["ok"]
        code, _ = rec.terminate()
        assert code == 0, rec.tail()
    finally:
        rec.ensure_stopped()
