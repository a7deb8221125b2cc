"""Fault scenario: a live zombie. One member of two is frozen (SIGSTOP) past its session
timeout, three times, while records keep arriving; each time it wakes up with buffers, timers
and uploads of partitions that the group has already given to the other member.

Before the lake protocol this lost and duplicated Parquet rows (a woken zombie's PUT replaced
the new owner's file under the same key) while PostgreSQL stayed exact.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.faults.harness import Deployment, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

SESSION_MS = 6000  # the broker's minimum: keeps the freezes short
FREEZES = 3

CONSUMED = "datarecorder_records_consumed_total"


async def test_member_frozen_past_its_session_timeout_changes_nothing(
    deployment: Deployment,
) -> None:
    dep = deployment
    total = scaled(66_000)
    rate = total / 50
    # Small, frequent S3 flushes: the frozen member is almost always mid-flush when stopped.
    knobs = {"KAFKA_SESSION_TIMEOUT_MS": SESSION_MS, "S3_BATCH_SIZE": 2000}
    frozen = dep.recorder(**knobs)
    other = dep.recorder(**knobs)
    feed = dep.feed(total, rate=rate, invalid_ratio=0.005)
    woke = time.monotonic()
    try:
        for _ in range(FREEZES):
            # Freeze a member that owns partitions and is writing them, as a GC pause would.
            await dep.wait_owned([frozen, other])
            await dep.wait_consumed(frozen, int(dep.metric(frozen, CONSUMED)) + 1)
            assert frozen.proc is not None
            os.kill(frozen.proc.pid, signal.SIGSTOP)
            # Until its session expired and the group handed everything to the other member.
            await dep.wait_owned([other], limit_s=SESSION_MS / 1000 * 10)
            os.kill(frozen.proc.pid, signal.SIGCONT)
            woke = time.monotonic()
        await feed.wait()
        targets = await dep.end_offsets()
        await dep.wait_drained(targets, limit_s=240, what="after the last freeze")
        recovery = time.monotonic() - woke
    finally:
        feed.stop()
        with_pid = [p for p in (frozen,) if p.proc is not None and p.proc.poll() is None]
        for p in with_pid:
            assert p.proc is not None
            os.kill(p.proc.pid, signal.SIGCONT)
    assert frozen.alive(), frozen.tail()
    assert other.alive(), other.tail()
    report = await dep.verify_exact()
    logs = [p.log_path.read_text() for p in dep.processes]
    record_result(
        "live zombie (SIGSTOP past session timeout x3)",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
        fenced_batches=sum(t.count('"batch_fenced"') for t in logs),
        adopted_ranges=sum(t.count('"batch_adopts_recorded_range"') for t in logs),
    )
