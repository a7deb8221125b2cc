"""Fault scenario 7: SIGTERM with full buffers flushes and commits everything before exit.

Batches are sized and timed so nothing flushes by itself; the only way the records reach the
stores is the shutdown sequence, and it must finish well inside SHUTDOWN_TIMEOUT_SEC.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.faults.harness import Deployment, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SHUTDOWN_TIMEOUT_SEC = 60


async def test_sigterm_flushes_full_buffers_before_exit(deployment: Deployment) -> None:
    dep = deployment
    total = scaled(60_000)
    rec = dep.recorder(
        BATCH_SIZE=1_000_000,
        BATCH_TIMEOUT_MS=3_600_000,
        S3_BATCH_SIZE=1_000_000,
        S3_BATCH_TIMEOUT_SEC=3600,
        MAX_BUFFER_SIZE=10_000_000,
        SHUTDOWN_TIMEOUT_SEC=SHUTDOWN_TIMEOUT_SEC,
    )
    await dep.feed(total, invalid_ratio=0.01).wait()

    # Every record fetched and held in the buffers: nothing may be durable yet.
    deadline = time.monotonic() + 120
    while dep.metric(rec, "datarecorder_records_consumed_total") < total:
        assert time.monotonic() < deadline, f"not all consumed\n{dep.logs()}"
        dep.check_alive()
        await asyncio.sleep(0.5)
    # The buffer gauge is refreshed every 2 s: until it shows (nearly) everything held.
    gauge = "datarecorder_buffer_records"
    await dep.wait_for(
        "buffers holding the feed",
        lambda: dep.metric(rec, gauge, sink="timescaledb") >= total * 0.9,
        30,
    )
    buffered = dep.metric(rec, gauge, sink="timescaledb")
    progress = await dep.progress()
    assert buffered >= total * 0.9, f"buffers hold {buffered} of {total}"
    # Each sink stored only its starting point (offset 0) at assignment: nothing flushed yet.
    stored = [*(progress["timescaledb"] or {}).values(), *(progress["s3"] or {}).values()]
    assert set(stored) <= {0}, f"flushed early: {progress}"

    code, seconds = dep.terminate(rec, SHUTDOWN_TIMEOUT_SEC + 30)
    assert code == 0, rec.tail()
    assert seconds < SHUTDOWN_TIMEOUT_SEC, f"exit took {seconds:.1f}s"
    assert '"flushed": true' in rec.tail(200), rec.tail()

    # Nothing runs any more: what the stores hold now is what the shutdown made durable.
    ends = await dep.end_offsets()
    progress = await dep.progress()
    for sink, sink_progress in progress.items():
        assert dep.behind(ends, sink_progress) == 0, (
            f"{sink} progress {sink_progress} short of {ends}"
        )
    report = await dep.verify_exact()
    record_result(
        "shutdown deadline",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=None,
        exit_s=round(seconds, 2),
        buffered_at_sigterm=int(buffered),
    )
