"""Fault scenario: a restart while one sink has no progress yet, with
KAFKA_AUTO_OFFSET_RESET=latest and the feed running during the downtime.

The database has flushed, the lake not yet (its first batch was still open). Before the fix
the missing lake progress sent every sink to the reset policy: `latest` skipped, in both
stores, everything that arrived while the pod was down.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.faults.harness import Deployment, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


async def test_restart_with_latest_keeps_every_sinks_known_progress(
    deployment: Deployment,
) -> None:
    dep = deployment
    first = scaled(20_000)
    rec = dep.recorder(
        KAFKA_AUTO_OFFSET_RESET="latest", S3_BATCH_TIMEOUT_SEC=600, S3_BATCH_SIZE=10**6
    )
    deadline = time.monotonic() + 60  # `latest` only means "from now" once its start is stored
    while '"partitions_assigned"' not in rec.log_path.read_text():
        assert time.monotonic() < deadline, rec.tail()
        await asyncio.sleep(0.3)
    await dep.feed(first, invalid_ratio=0.005).wait()
    ends = await dep.end_offsets()
    deadline = time.monotonic() + 120
    while dep.behind(ends, await dep.db_progress()) > 0:
        assert time.monotonic() < deadline, dep.logs()
        await asyncio.sleep(0.5)
    dep.kill(rec)
    await dep.feed(first, seed=43).wait()  # while the pod is down
    restarted = time.monotonic()
    dep.recorder(KAFKA_AUTO_OFFSET_RESET="latest")
    targets = await dep.end_offsets()
    await dep.wait_drained(targets, limit_s=180, what="after the restart")
    report = await dep.verify_exact()
    record_result(
        "restart, one sink without progress, reset=latest",
        report,
        produced=2 * first,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(time.monotonic() - restarted, 1),
    )
