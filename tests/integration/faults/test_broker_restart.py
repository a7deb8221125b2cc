"""Fault scenario 4: the Kafka broker is stopped and started again while the recorder works.

The recorder must reconnect by itself (same process, no restart), keep its group membership
or rejoin, and finish with every record exactly once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.faults.harness import Deployment, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

DOWN_SEC = 10.0


async def test_broker_restart_recorder_reconnects(deployment: Deployment) -> None:
    dep = deployment
    total = scaled(60_000)
    rate = total / 30
    rec = dep.recorder()
    feed = dep.feed(total, rate=rate, invalid_ratio=0.005)
    try:
        await dep.wait_consumed(rec, int(rate * 5))
        await asyncio.to_thread(dep.stack.stop, "kafka")
        # The outage itself lasts this long: it is the fault, not a wait for a condition.
        await asyncio.sleep(DOWN_SEC)
        dep.check_alive()
        await asyncio.to_thread(dep.stack.start, "kafka")
        back = time.monotonic()
        await feed.wait()
        targets = await dep.end_offsets()
        await dep.wait_drained(targets, limit_s=240, what="after the broker returned")
        recovery = time.monotonic() - back
    finally:
        feed.stop()
    assert rec.alive(), rec.tail()
    assert "consumer: healthy" in dep.health(rec)
    report = await dep.verify_exact()
    record_result(
        "broker restart",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
        broker_down_s=DOWN_SEC,
    )
