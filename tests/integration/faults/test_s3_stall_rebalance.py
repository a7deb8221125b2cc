"""Fault scenario: a rebalance while S3 is stalled longer than the revocation deadline.

The S3 server is frozen (SIGSTOP: connections hang, nothing is refused), then one of two
members dies. The group rebalances; the survivor's revocation waits REVOKE_DEADLINE_SEC for
its in-flight uploads, abandons them and takes all partitions; when S3 thaws, the abandoned
PUTs that were already on the wire (the dead member's too) land late, behind the new owner. Under the lake protocol those late PUTs
carry a recorded range's own bytes, so both stores stay exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from urllib.parse import urlparse

import pytest

from recorder.kafka.options import REVOKE_DEADLINE_SEC
from tests.integration.faults.harness import Deployment, listener_pid, record_result, scaled

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def s3_server_pid(endpoint: str) -> int:
    """The process listening on the S3 endpoint's port (moto's gate, or MinIO)."""
    port = urlparse(endpoint).port
    assert port is not None, endpoint
    return listener_pid(port)


async def test_rebalance_while_s3_stalls_past_the_revocation_deadline(
    deployment: Deployment,
) -> None:
    dep = deployment
    total = scaled(40_000)
    knobs = {"KAFKA_SESSION_TIMEOUT_MS": 6000}
    a = dep.recorder(**knobs)
    b = dep.recorder(**knobs)
    feed = dep.feed(total, rate=total / 40, invalid_ratio=0.005)
    pid = s3_server_pid(dep.env["S3_ENDPOINT_URL"])
    stalled_for = REVOKE_DEADLINE_SEC + 10
    try:
        await dep.wait_owned([a, b])
        await dep.wait_consumed(a, int(total / 40 * 3))
        os.kill(pid, signal.SIGSTOP)
        stalled = time.monotonic()
        try:
            # Records arriving for the cold path while its store cannot answer.
            await dep.wait_for(
                "S3 records buffered in the stall",
                lambda: dep.metric(a, "datarecorder_buffer_records", sink="s3") > 0,
                30,
            )
            dep.kill(b)  # the group rebalances after its session timeout
            deadline = stalled + stalled_for + 30
            while '"revoke_abandoned"' not in a.log_path.read_text():
                assert time.monotonic() < deadline, a.tail(40)
                await asyncio.sleep(0.5)
            # The stall is the fault: it lasts past the deadline whatever else happens.
            await asyncio.sleep(max(0.0, stalled + stalled_for - time.monotonic()))
        finally:
            os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        await feed.wait()
        targets = await dep.end_offsets()
        await dep.wait_drained(targets, limit_s=240, what="after the stall")
    finally:
        feed.stop()
    report = await dep.verify_exact()
    record_result(
        "rebalance while S3 stalls past the revocation deadline",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(time.monotonic() - thawed, 1),
        stalled_s=round(stalled_for, 1),
    )
