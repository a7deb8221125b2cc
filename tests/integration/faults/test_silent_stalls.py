"""Fault scenario: a progress object that the recorder cannot use (corrupt JSON) at assignment.

aiokafka swallows what a rebalance callback raises: before the fix the partitions stayed
assigned but were never read, while /health said OK. Now they are held (paused) with the
store's own message on /ready and in `datarecorder_store_errors_total`, retried with backoff,
and taken as soon as the object is fixed.
"""

from __future__ import annotations

import asyncio
import time

import aioboto3
import pytest

from recorder.sinks.lake.parquet import progress_key
from tests.integration.faults.harness import S3_PREFIX, Deployment, record_result
from tests.support.recorder_proc import http_get

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


async def test_corrupt_progress_object_is_loud_and_recovers(deployment: Deployment) -> None:
    dep = deployment
    tick = next(t for t in dep.topics if "tick" in t)
    key = progress_key(S3_PREFIX, dep.env["KAFKA_GROUP_ID"], tick, 0)
    session = aioboto3.Session()
    async with session.client("s3", **dep.stack.s3_client_kwargs()) as s3:
        await s3.put_object(Bucket=dep.env["S3_BUCKET"], Key=key, Body=b"{not json")
    await dep.feed(5_500).wait()
    rec = dep.recorder(wait_ready=None)
    deadline = time.monotonic() + 90
    while dep.metric(rec, "datarecorder_store_errors_total", operation="assign") < 1:
        assert time.monotonic() < deadline, rec.tail(40)
        dep.check_alive()
        await asyncio.sleep(0.5)
    status, body = http_get(rec.url + "/ready", 3.0)
    assert status == 503 and "partitions: partition_held" in body and key not in body, body
    log = rec.log_path.read_text()  # the detail (which object, why) is in the log only
    assert "corrupt" in log and key in log, rec.tail(40)
    assert rec.alive()

    async with session.client("s3", **dep.stack.s3_client_kwargs()) as s3:
        await s3.delete_object(Bucket=dep.env["S3_BUCKET"], Key=key)  # the operator's fix
    fixed = time.monotonic()
    targets = await dep.end_offsets()
    await dep.wait_drained(targets, limit_s=120, what="after the fix")
    rec.wait_ready(30)
    report = await dep.verify_exact()
    record_result(
        "corrupt progress object at assignment",
        report,
        produced=5_500,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(time.monotonic() - fixed, 1),
    )
