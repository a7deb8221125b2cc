"""Fault scenario 1: the recorder is SIGKILLed at random moments under load and restarted.

Every kill may land mid-COPY, between an upload and its progress write, during a rebalance or
a dead-letter send; after the last restart the stores must hold every record exactly once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.integration.faults.harness import Deployment, random_delays, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

KILLS = int(os.environ.get("FAULTS_KILLS", "8"))


async def test_sigkill_loop_loses_and_duplicates_nothing(deployment: Deployment) -> None:
    dep = deployment
    total = scaled(60_000)
    seed = int(os.environ.get("FAULTS_SEED", str(int(time.time()))))
    # A rate the recorder can follow, spread over the kill loop so every kill hits live work.
    rate = max(total / 60, 1000.0)
    rec = dep.recorder()
    feed = dep.feed(total, rate=rate, invalid_ratio=0.005)
    kills = 0
    restarted_at = time.monotonic()
    try:
        for delay in random_delays(KILLS, 1.0, 9.0, seed):
            await asyncio.sleep(delay)
            dep.kill(rec)
            kills += 1
            # Restart at once: the group still waits for the dead member's session to expire,
            # so the next kill often lands in the middle of a rebalance.
            rec = dep.recorder(wait_ready=None)
            restarted_at = time.monotonic()
        rec.wait_ready(90)
        await feed.wait()
    finally:
        feed.stop()
    targets = await dep.end_offsets()
    await dep.wait_drained(targets, limit_s=300, what="after the last restart")
    recovery = time.monotonic() - restarted_at
    report = await dep.verify_exact()
    assert kills >= KILLS
    record_result(
        "crash loop",
        report,
        produced=total,
        kills=kills,
        seed=seed,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
    )


async def test_restart_while_cold_path_lags_far_behind(deployment: Deployment) -> None:
    """SIGKILL when the database holds everything and S3 nothing yet: the restart must seek
    every partition back to the S3 progress (none), and replay into S3 only."""
    dep = deployment
    total = scaled(30_000)
    rec = dep.recorder(S3_BATCH_TIMEOUT_SEC=600, S3_BATCH_SIZE=1_000_000)
    await dep.feed(total, invalid_ratio=0.005).wait()
    ends = await dep.end_offsets()
    deadline = time.monotonic() + 120
    while dep.behind(ends, await dep.db_progress()) > 0:
        assert time.monotonic() < deadline, dep.logs()
        await asyncio.sleep(0.5)
    # Kafka's committed offsets follow the database's transaction (the commit comes after it).
    await dep.wait_for("committed offsets at the database's", _committed_is_db(dep), 30)
    # The cold path stored only its starting point at assignment (offset 0), nothing flushed.
    assert set((await dep.s3_progress() or {}).values()) <= {0}
    dep.kill(rec)
    restarted = time.monotonic()
    dep.recorder()
    await dep.wait_drained(ends, limit_s=120, what="after the restart")
    recovery = time.monotonic() - restarted
    report = await dep.verify_exact()
    record_result(
        "SIGKILL while S3 lags (DB done, S3 empty)",
        report,
        produced=total,
        kills=1,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
    )


def _committed_is_db(dep: Deployment) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        committed, stored = await dep.committed(), await dep.db_progress() or {}
        return all(committed.get(tp) == off for tp, off in stored.items())

    return check
