"""Fault scenario 5: partitions move between recorder processes of one group under load.

Two members start, a third joins mid-load, then one leaves cleanly (SIGTERM: its revocation
flushes) and another dies (SIGKILL: its partitions are replayed by the survivor).
"""

from __future__ import annotations

import time

import pytest

from tests.integration.faults.harness import Deployment, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


async def test_members_join_leave_and_die_without_loss(deployment: Deployment) -> None:
    dep = deployment
    total = scaled(90_000)
    rate = total / 50
    a = dep.recorder()
    b = dep.recorder()
    feed = dep.feed(total, rate=rate, invalid_ratio=0.005)
    try:
        await dep.wait_consumed(a, int(rate * 3))
        c = dep.recorder()
        await dep.wait_owned([a, b, c])  # the third member joined and got partitions
        await dep.wait_consumed(c, 1)
        code, seconds = dep.terminate(a)
        assert code == 0, a.tail()
        await dep.wait_owned([b, c])  # the group rebalanced around the member that left
        dep.kill(b)
        killed = time.monotonic()
        await feed.wait()
        targets = await dep.end_offsets()
        await dep.wait_drained(targets, limit_s=240, what="after the members left")
        recovery = time.monotonic() - killed
    finally:
        feed.stop()
    assert c.alive(), c.tail()
    assert dep.metric(c, "datarecorder_assigned_partitions") == 2 * dep.partitions
    report = await dep.verify_exact()
    fenced = sum(p.log_path.read_text().count('"batch_fenced"') for p in dep.processes)
    record_result(
        "rebalance (join, SIGTERM, SIGKILL)",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
        sigterm_exit_s=round(seconds, 2),
        fenced_batches=fenced,
    )
