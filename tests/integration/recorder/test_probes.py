"""The recorder's probes through a 60 s database outage: alive throughout, unready meanwhile.

Kubernetes restarts a container whose liveness probe fails; a recorder restarted because its
database is down would also stop writing S3 and rebalance the group. So /live must stay 200
while /ready (and /health) say which store is missing, and the pod serves again afterwards.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess, http_get, produce, wait_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_SEC = 60.0


async def test_liveness_stays_up_while_the_database_is_down(
    stack_faults: Stack,
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=2,
        RETRY_MAX_BACKOFF_SEC=2,
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start(wait_ready=90)
    try:
        assert http_get(rec.url + "/live")[0] == 200
        await asyncio.to_thread(produce, env, "--ticks", "2000", "--orderbooks", "200")
        await stack_faults.astop("postgres")
        live: list[int] = []
        ready: list[tuple[int, str]] = []
        end = time.monotonic() + OUTAGE_SEC
        while time.monotonic() < end:
            live.append((await asyncio.to_thread(http_get, rec.url + "/live"))[0])
            ready.append(await asyncio.to_thread(http_get, rec.url + "/ready"))
            assert rec.alive(), rec.tail()
            await asyncio.sleep(1)
        await stack_faults.astart("postgres")

        assert set(live) == {200}, f"/live failed during the outage: {live}"
        unready = [body for status, body in ready if status == 503]
        assert unready, f"/ready stayed 200 while the database was down: {ready[-3:]}"
        codes = ("timescaledb: store_unreachable", "timescaledb: writes_failing")
        assert any(c in body for body in unready for c in codes), unready[-1]
        # The database's errors (host, user, the driver's text) stay in the log.
        assert not any("Error" in body or "5432" in body for body in unready), unready
        # Ready again once the database is back, and nothing was lost or doubled.
        deadline = time.monotonic() + 90
        while (await asyncio.to_thread(http_get, rec.url + "/ready"))[0] != 200:
            assert time.monotonic() < deadline, rec.tail()
            await asyncio.sleep(0.5)
        report = await asyncio.to_thread(wait_exactly_once, env, rec, 120)
        assert report["ok"]
    finally:
        rec.ensure_stopped()
