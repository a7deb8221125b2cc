"""Fault scenarios of LAKE_FORMAT=iceberg where a store hangs rather than fails: the object store
frozen (SIGSTOP) while recorders commit, with a rebalance during the stall; and the catalog
database hung behind a relay that stops forwarding bytes without closing anything, with a
recorder SIGKILLed during the hang (its last commit's outcome unknown to anyone).

In both the hot path keeps recording during the hang, and afterwards both tables and the
database hold every record exactly once (`datarecorder verify`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from urllib.parse import quote

import pytest

from tests.integration.faults.harness import (
    Deploy,
    Deployment,
    TPs,
    record_result,
    scaled,
)
from tests.integration.faults.test_s3_stall_rebalance import s3_server_pid
from tests.support.iceberg import lake
from tests.support.recorder_proc import RecorderProcess
from tests.support.tcp_relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

PARTITIONS = 4
SESSION_MS = 6000  # the broker's minimum: the group notices a killed member soon
STALL_S = 20.0
# Longer than the catalog's silence limit (recorder/sinks/iceberg/wait.py), so calls time out.
HANG_S = 35.0
TIMED_OUT = "did not answer within"


@pytest.fixture
async def iceberg_deployment(deploy: Deploy) -> Deployment:
    return await deploy(PARTITIONS, LAKE_FORMAT="iceberg")


def recorded(progress: TPs | None) -> int:
    return sum(progress.values()) if progress else 0


async def test_s3_frozen_while_committing_with_a_rebalance(
    iceberg_deployment: Deployment,
) -> None:
    """S3 frozen for STALL_S while two members commit; one member dies during the stall (the
    group rebalances while uploads hang). After SIGCONT every record is in the tables once; the
    database kept recording meanwhile."""
    dep = iceberg_deployment
    total = scaled(40_000)
    knobs = {"KAFKA_SESSION_TIMEOUT_MS": SESSION_MS, "S3_BATCH_SIZE": 1000}
    a = dep.recorder(**knobs)
    b = dep.recorder(**knobs)
    feed = dep.feed(total, rate=total / 40, invalid_ratio=0.005)
    pid = s3_server_pid(dep.env["S3_ENDPOINT_URL"])
    try:
        await dep.wait_owned([a, b])
        await dep.wait_consumed(a, int(total / 40 * 3))
        os.kill(pid, signal.SIGSTOP)
        stalled = time.monotonic()
        try:
            await dep.wait_for(
                "records buffered for the tables in the stall",
                lambda: dep.metric(a, "datarecorder_buffer_records", sink="iceberg") > 0,
                STALL_S,
            )
            hot_before = recorded(await dep.db_progress())
            dep.kill(b)  # the group rebalances while uploads hang
            await dep.wait_owned([a], limit_s=STALL_S + 30)
            # The stall is the fault: it lasts STALL_S whatever else happened.
            await asyncio.sleep(max(0.0, stalled + STALL_S - time.monotonic()))
            hot_during = recorded(await dep.db_progress())
        finally:
            os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        assert hot_during > hot_before, "the database stopped recording while S3 was frozen"
        # The tables' requests gave up on the silent S3 and were retried (none waits forever).
        retried = [
            line
            for line in a.log_path.read_text().splitlines()
            if '"store_retry"' in line and '"iceberg_' in line
        ]
        assert retried, a.tail(40)
        await feed.wait()
        await dep.wait_drained(await dep.end_offsets(), limit_s=240, what="after the stall")
    finally:
        feed.stop()
    assert a.alive(), a.tail()
    report = await dep.verify_exact()
    record_result(
        "iceberg S3 stall (SIGSTOP) with a rebalance",
        report,
        produced=total,
        stalled_s=STALL_S,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        hot_path_during_stall=hot_during - hot_before,
        recovery_s=round(time.monotonic() - thawed, 1),
        commit_conflicts=a.log_path.read_text().count('"iceberg_commit_conflict"'),
    )


def catalog_through(dep: Deployment, relay: Relay) -> dict[str, str]:
    """The recorder's settings that put the catalog (the test's own database) behind `relay`."""
    user = quote(dep.env["TIMESCALEDB_USER"], safe="")
    db = quote(dep.env["TIMESCALEDB_DB"], safe="")
    return {
        "ICEBERG_CATALOG_URI": f"postgresql+psycopg2://{user}@{relay.address}/{db}",
        "ICEBERG_CATALOG_PASSWORD": dep.env.get("TIMESCALEDB_PASSWORD", ""),
    }


def timed_out(rec: RecorderProcess) -> int:
    """Catalog calls of `rec` that gave up on a silent connection and were retried."""
    return sum(
        1
        for line in rec.log_path.read_text().splitlines()
        if '"store_retry"' in line and TIMED_OUT in line
    )


async def test_catalog_hang_times_out_commits_and_a_kill_during_it_loses_nothing(
    iceberg_deployment: Deployment,
) -> None:
    """The catalog stops answering (bytes held both ways, connections open) for HANG_S: the
    recorders' catalog calls time out and are retried, /health says the tables' store is
    unreachable, the database keeps recording; one recorder is SIGKILLed during the hang, with
    whatever commit it had sent unanswered. After the catalog answers again, every record is in
    the tables once: an unknown outcome is resolved by reading the progress again."""
    dep = iceberg_deployment
    total = scaled(40_000)
    target = (dep.env["TIMESCALEDB_HOST"], int(dep.env["TIMESCALEDB_PORT"]))
    with Relay(target) as relay:
        knobs: dict[str, object] = {
            "KAFKA_SESSION_TIMEOUT_MS": SESSION_MS,
            "S3_BATCH_SIZE": 500,
            **catalog_through(dep, relay),
        }
        a = dep.recorder(wait_ready=90, **knobs)
        b = dep.recorder(wait_ready=90, **knobs)
        feed = dep.feed(total, rate=total / 50, invalid_ratio=0.005)
        try:
            await dep.wait_owned([a, b])
            await dep.wait_consumed(a, int(total / 50 * 3))
            # Commits are flowing through the relay before it hangs.
            await dep.wait_for("tables committed", lambda: relay.connections > 0, 30)
            relay.hang()
            hung = time.monotonic()
            try:
                hot_before = recorded(await dep.db_progress())
                await asyncio.sleep(1)  # b's next commit is sent into the hang
                dep.kill(b)
                await dep.wait_for(
                    "a catalog call of the survivor timed out",
                    lambda: timed_out(a) > 0,
                    HANG_S,
                )
                await dep.wait_for(
                    "/health says the tables' store does not answer",
                    lambda: "iceberg: unhealthy store_unreachable" in dep.health(a),
                    HANG_S,
                )
                await asyncio.sleep(max(0.0, hung + HANG_S - time.monotonic()))
                hot_during = recorded(await dep.db_progress())
                timeouts = timed_out(a)
            finally:
                relay.resume()
            resumed = time.monotonic()
            assert hot_during > hot_before, "the database stopped recording in the hang"
            await feed.wait()
            await dep.wait_drained(await dep.end_offsets(), limit_s=240, what="after the hang")
            recovery_s = round(time.monotonic() - resumed, 1)
            await dep.wait_for(
                "/health healthy again",
                lambda: "iceberg: healthy" in dep.health(a),
                60,
            )
        finally:
            feed.stop()
        assert a.alive(), a.tail()
        report = await dep.verify_exact()
    # What the killed member and the refused commits left behind is removable: with no recorder
    # running, remove-orphans --older-than 0 deletes it, and every record is still there once.
    dep.terminate(a)
    cleaned = await asyncio.to_thread(lake, dep.env, "remove-orphans", "--older-than", "0")
    orphans = sum(
        int(line.split(": ", 1)[1].split(" ", 1)[0])
        for line in cleaned.stdout.splitlines()
        if "orphan files deleted" in line
    )
    report = await dep.verify_exact()
    record_result(
        "iceberg catalog hang (relay holds bytes) with a SIGKILL",
        report,
        produced=total,
        hung_s=HANG_S,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=recovery_s,
        catalog_timeouts=timeouts,
        hot_path_during_hang=hot_during - hot_before,
        commit_conflicts=a.log_path.read_text().count('"iceberg_commit_conflict"'),
        orphans_removed=orphans,
    )


def resolved_as_done(rec: RecorderProcess) -> int:
    """Flushes of the tables' store after a timed-out call that recorded rows without writing
    a file: the retry read the progress and found its batches committed already (Outcome.DONE:
    the commit whose answer was lost had applied)."""
    lines = rec.log_path.read_text().splitlines()
    first = next((i for i, line in enumerate(lines) if TIMED_OUT in line), len(lines))
    return sum(
        1
        for line in lines[first:]
        if '"event": "flush"' in line
        and '"sink": "iceberg"' in line
        and '"files"' not in line
        and '"fenced": 0' in line
    )


async def test_a_catalog_commit_carried_out_but_never_answered_is_not_committed_twice(
    iceberg_deployment: Deployment,
) -> None:
    """The catalog carries out a commit (its COMMIT reaches the server) but the answer is held
    on that connection: the recorder cannot know whether it applied. Its call times out; the
    retry reads the table's progress, finds its batches there and commits nothing again."""
    dep = iceberg_deployment
    total = scaled(30_000)
    target = (dep.env["TIMESCALEDB_HOST"], int(dep.env["TIMESCALEDB_PORT"]))
    with Relay(target) as relay:
        rec = dep.recorder(wait_ready=90, S3_BATCH_SIZE=500, **catalog_through(dep, relay))
        feed = dep.feed(total, rate=total / 30, invalid_ratio=0.005)
        try:
            await dep.wait_consumed(rec, int(total / 30 * 3))  # past the start-up commits
            relay.hold_replies_after(b"COMMIT")
            await dep.wait_for("a commit sent, its answer held", lambda: relay.held > 0, 60)
            await dep.wait_for("its call timed out", lambda: timed_out(rec) > 0, 60)
            await dep.wait_for(
                "the retry found the commit applied", lambda: resolved_as_done(rec) > 0, 60
            )
            relay.resume()
            await feed.wait()
            await dep.wait_drained(await dep.end_offsets(), limit_s=240, what="after the hold")
        finally:
            feed.stop()
            relay.resume()
        assert rec.alive(), rec.tail()
        report = await dep.verify_exact()
    record_result(
        "iceberg catalog commit applied, answer lost",
        report,
        produced=total,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        catalog_timeouts=timed_out(rec),
        resolved_as_done=resolved_as_done(rec),
    )
