"""Fault scenarios of LAKE_FORMAT=iceberg: a recorder SIGKILLed mid-stream and restarted, and a
member frozen (SIGSTOP) past its session timeout that wakes up (SIGCONT) with batches of
partitions the group gave away. After either, both tables and the database hold every record
exactly once (`datarecorder verify`), and the zombie committed nothing behind the new owner.

Only recorders are killed or frozen, never a service: these run on external services too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.integration.faults.harness import (
    Deploy,
    Deployment,
    random_delays,
    record_result,
    scaled,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

PARTITIONS = 4
SESSION_MS = 6000  # the broker's minimum: keeps the freeze short
CONSUMED = "datarecorder_records_consumed_total"
KILLS = int(os.environ.get("FAULTS_KILLS", "6"))


@pytest.fixture
async def iceberg_deployment(deploy: Deploy) -> Deployment:
    """The fault deployment with the cold path as Iceberg tables (catalog in the test's
    database, warehouse in its bucket), on any stack."""
    return await deploy(PARTITIONS, LAKE_FORMAT="iceberg")


async def test_sigkill_mid_stream_and_restart_leave_every_record_once(
    iceberg_deployment: Deployment,
) -> None:
    dep = iceberg_deployment
    total = scaled(30_000)
    seed = int(os.environ.get("FAULTS_SEED", str(int(time.time()))))
    # Commits many times a second, so that kills land between an upload and its commit, and
    # inside commits.
    knobs = {"S3_BATCH_SIZE": 200, "S3_BATCH_TIMEOUT_SEC": 0.1}
    rec = dep.recorder(**knobs)
    feed = dep.feed(total, rate=max(total / 30, 1000.0), invalid_ratio=0.005)
    kills = 0
    try:
        for delay in random_delays(KILLS, 1.0, 4.0, seed):
            await asyncio.sleep(delay)
            dep.kill(rec)  # mid-upload, mid-commit, mid-rebalance: wherever it is
            kills += 1
            rec = dep.recorder(**knobs, wait_ready=None)
        rec.wait_ready(90)
        await feed.wait()
    finally:
        feed.stop()
    await dep.wait_drained(await dep.end_offsets(), limit_s=240, what="after the last restart")
    report = await dep.verify_exact()
    record_result("iceberg crash loop", report, produced=total, kills=kills, seed=seed)


async def test_frozen_member_cannot_commit_behind_the_new_owner(
    iceberg_deployment: Deployment,
) -> None:
    dep = iceberg_deployment
    total = scaled(30_000)
    knobs = {"KAFKA_SESSION_TIMEOUT_MS": SESSION_MS, "S3_BATCH_SIZE": 500}
    frozen = dep.recorder(**knobs)
    other = dep.recorder(**knobs)
    feed = dep.feed(total, rate=total / 30, invalid_ratio=0.005)
    try:
        await dep.wait_owned([frozen, other])
        await dep.wait_consumed(frozen, int(dep.metric(frozen, CONSUMED)) + 1)
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        await dep.wait_owned([other], limit_s=SESSION_MS / 1000 * 10)
        await asyncio.sleep(2)  # the new owner commits meanwhile
        os.kill(frozen.proc.pid, signal.SIGCONT)
        await feed.wait()
        await dep.wait_drained(await dep.end_offsets(), limit_s=240, what="after the wake-up")
    finally:
        feed.stop()
        if frozen.proc is not None and frozen.proc.poll() is None:
            os.kill(frozen.proc.pid, signal.SIGCONT)
    assert frozen.alive(), frozen.tail()
    assert other.alive(), other.tail()
    report = await dep.verify_exact()
    log = frozen.log_path.read_text()
    # The zombie woke up with batches of partitions it had lost: its commits were refused.
    assert log.count('"batch_fenced"') >= 1, frozen.tail()
    record_result(
        "iceberg live zombie (SIGSTOP past session timeout)",
        report,
        produced=total,
        fenced_batches=log.count('"batch_fenced"'),
        commit_conflicts=log.count('"iceberg_commit_conflict"'),
    )
