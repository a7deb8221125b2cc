"""Fault scenarios 2 and 3: the database, then S3, stopped for 20 s under load.

The recorder stays up and says which store is down on /health; the other path keeps going;
buffers stop at MAX_BUFFER_SIZE (the consumer pauses, the backlog stays in Kafka); when the
store returns, it catches up and every record is stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from tests.integration.faults.harness import Deployment, TPs, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

OUTAGE_SEC = 20.0
FETCH_MAX_RECORDS = 5000  # the recorder's default: one fetch may overshoot the limit by this


@dataclass
class Samples:
    """What the test saw every half second while a store was down."""

    health: list[str] = field(default_factory=list)
    buffered: dict[str, float] = field(default_factory=lambda: {"timescaledb": 0, "s3": 0})
    paused: float = 0
    behind: dict[str, list[int]] = field(default_factory=lambda: {"timescaledb": [], "s3": []})


async def watch(dep: Deployment, seconds: float, targets: TPs | None = None) -> Samples:
    rec = dep.processes[-1]
    out = Samples()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.health.append(dep.health(rec))
        for sink in out.buffered:
            value = dep.metric(rec, "datarecorder_buffer_records", sink=sink)
            out.buffered[sink] = max(out.buffered[sink], value)
        out.paused = max(out.paused, dep.metric(rec, "datarecorder_consumer_paused"))
        if targets is not None:
            for sink, stored in (await dep.progress()).items():
                if stored is not None:
                    out.behind[sink].append(dep.behind(targets, stored))
        dep.check_alive()
        await asyncio.sleep(0.5)
    return out


async def wait_health(dep: Deployment, line: str, limit_s: float = 30) -> None:
    rec = dep.processes[-1]
    deadline = time.monotonic() + limit_s
    while line not in dep.health(rec):
        assert time.monotonic() < deadline, f"/health never said {line!r}: {dep.health(rec)}"
        await asyncio.sleep(0.3)


async def test_database_outage_pauses_and_catches_up(deployment: Deployment) -> None:
    dep = deployment
    limit = 20_000
    total = scaled(120_000)
    rate = total / 40  # 40 s of feed; the 20 s outage alone backs up about 3 x MAX_BUFFER_SIZE
    rec = dep.recorder(MAX_BUFFER_SIZE=limit)
    feed = dep.feed(total, rate=rate, invalid_ratio=0.005)
    try:
        await dep.wait_consumed(rec, int(rate * 5))
        await wait_health(dep, "timescaledb: healthy")
        before = await dep.s3_progress()
        await asyncio.to_thread(dep.stack.stop, "postgres")
        # The S3 targets are where Kafka stood when the database went away.
        during = await watch(dep, OUTAGE_SEC, targets=await dep.end_offsets())
        s3_during = await dep.s3_progress()
        lag_at_restart = sum((await dep.end_offsets()).values()) - sum(
            (await dep.db_progress() or {}).values()
        )
        await asyncio.to_thread(dep.stack.start, "postgres")
        back = time.monotonic()
        targets = await dep.end_offsets()
        await wait_health(dep, "timescaledb: healthy", limit_s=60)
        recovery = await dep.wait_drained(targets, limit_s=180, what="after the database returned")
        await feed.wait()
    finally:
        feed.stop()
    await dep.wait_drained(limit_s=120)
    report = await dep.verify_exact()

    assert any("timescaledb: unhealthy" in h for h in during.health), during.health[-3:]
    assert all("consumer: healthy" in h for h in during.health), during.health[-3:]
    assert all("s3: healthy" in h for h in during.health), during.health[-3:]
    assert during.paused == 1, "the consumer never paused while the database was down"
    assert during.buffered["timescaledb"] <= limit + FETCH_MAX_RECORDS, during.buffered
    # The cold path kept writing while the hot path was down.
    assert before is not None and s3_during is not None
    assert sum(s3_during.values()) > sum(before.values()) + limit // 2, (before, s3_during)
    # The backlog stayed in Kafka, far beyond what the recorder holds in memory.
    assert lag_at_restart > 2 * limit, lag_at_restart
    record_result(
        "database outage 20 s",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
        max_buffered=int(during.buffered["timescaledb"]),
        kafka_backlog_at_restart=lag_at_restart,
        total_since_restart_s=round(time.monotonic() - back, 1),
    )


async def test_s3_outage_keeps_hot_path_latency(deployment: Deployment) -> None:
    dep = deployment
    total = scaled(80_000)
    rate = total / 40
    # Room for the whole outage's backlog, so the hot path never has to wait for the cold one.
    limit = int(rate * (OUTAGE_SEC + 15))
    rec = dep.recorder(MAX_BUFFER_SIZE=limit)
    feed = dep.feed(total, rate=rate, invalid_ratio=0.005)
    try:
        await dep.wait_consumed(rec, int(rate * 4))
        await wait_health(dep, "s3: healthy")
        normal = await watch(dep, 4, targets=None)
        hot_lag_normal = await hot_lag_seconds(dep, rate, 4)
        await asyncio.to_thread(dep.stack.stop, "s3")
        hot_lag_outage = await hot_lag_seconds(dep, rate, OUTAGE_SEC - 2)
        during = await watch(dep, 2)
        await asyncio.to_thread(dep.stack.start, "s3")
        targets = await dep.end_offsets()
        await wait_health(dep, "s3: healthy", limit_s=60)
        recovery = await dep.wait_drained(targets, limit_s=180, what="after S3 returned")
        await feed.wait()
    finally:
        feed.stop()
    await dep.wait_drained(limit_s=120)
    report = await dep.verify_exact()

    assert any("s3: unhealthy" in h for h in during.health), during.health
    assert all("timescaledb: healthy" in h for h in during.health + normal.health)
    assert during.paused == 0, "the consumer paused although the buffers had room"
    # Hot-path freshness during the outage: records reach the database about as fast as before.
    assert max(hot_lag_outage) <= max(3.0, 2 * max(hot_lag_normal)), (
        hot_lag_normal,
        hot_lag_outage,
    )
    record_result(
        "S3 outage 20 s",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
        hot_lag_normal_s=round(max(hot_lag_normal), 2),
        hot_lag_during_outage_s=round(max(hot_lag_outage), 2),
    )


async def hot_lag_seconds(dep: Deployment, rate: float, seconds: float) -> list[float]:
    """Samples of how far the database trails Kafka, in seconds of feed."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ends = await dep.end_offsets()
        stored = await dep.db_progress()
        out.append(dep.behind(ends, stored) / rate)
        dep.check_alive()
        await asyncio.sleep(0.5)
    return out
