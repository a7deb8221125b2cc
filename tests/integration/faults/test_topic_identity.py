"""Fault scenarios where progress no longer describes the log, and nothing in the offsets says so.

1. The tick topic is deleted and recreated while the recorder is down, and the producer writes
   more records to the new log than the old progress counted. "Progress beyond the log end"
   cannot see it; before, the recorder resumed at the old progress and skipped the new log's
   first records. Now the stores keep the topic ID their progress counts, and a different ID
   halts the partition until reset-progress.
2. The lake's progress object of a partition is deleted (a lifecycle rule, by hand) while the
   database holds progress for it. Before, the lake started again from the reset policy (the
   log again from its start, or from its end). Now the partition halts and says why.
"""

from __future__ import annotations

from typing import Any

import pytest

from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import S3Lake
from tests.integration.faults.harness import Deployment, record_result
from tests.integration.faults.test_topic_recreated import recreate, reset_progress
from tests.support import as_sent
from tests.support.recorder_proc import RecorderProcess, http_get

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FIRST, LATER = 1000, 1500


def _ready_says(rec: RecorderProcess, code: str, *logged: str) -> bool:
    """/ready is 503 and names the code; the reason's detail is in the log, not the body."""
    try:
        status, body = http_get(rec.url + "/ready", 3.0)
    except OSError:
        return False
    if status != 503 or code not in body:
        return False
    log = rec.log_path.read_text()
    assert not any(w in body for w in logged), body
    return all(w in log for w in logged)


async def _stored_exactly(dep: Deployment, sent: list[Any], tick: str) -> bool:
    return await as_sent.holds_exactly(dep.env, as_sent.ticks_wanted(sent, tick))


def _report(got: dict[str, Any], sent: list[Any], tick: str) -> dict[str, Any]:
    return as_sent.fault_report(as_sent.ticks_wanted(sent, tick), got)


async def _first_recorded(dep: Deployment) -> list[Any]:
    """FIRST ticks recorded in both stores, then the recorder stopped."""
    tick = dep.topics[0]
    first = as_sent.corpus((tick, dep.topics[1]), 1, ticks=FIRST, books=0, seed=1)
    rec = dep.recorder()
    await as_sent.send(dep.env["KAFKA_BROKERS"], first)
    await dep.wait_drained({(tick, 0): FIRST}, limit_s=120, what="the first ticks")
    dep.terminate(rec)
    return first


async def test_a_topic_recreated_while_down_and_outgrown_halts(one_partition: Deployment) -> None:
    dep = one_partition
    tick = dep.topics[0]
    first = await _first_recorded(dep)
    await recreate(dep.env["KAFKA_BROKERS"], tick, 1)
    later = as_sent.corpus((tick, dep.topics[1]), 1, ticks=LATER, books=0, seed=2, first=FIRST)
    await as_sent.send(dep.env["KAFKA_BROKERS"], later)  # the new log is longer than 1,000

    rec = dep.recorder(wait_ready=None)
    await dep.wait_for(
        "/ready names the recreated topic",
        lambda: _ready_says(rec, "topic_recreated", "topic ID", "was deleted and recreated"),
        90,
    )
    assert (await dep.db_progress() or {})[(tick, 0)] == FIRST
    assert await _stored_exactly(dep, first, tick)  # nothing of the new log, nothing skipped
    assert dep.metric(rec, "datarecorder_partition_halted", topic=tick) == 1
    dep.terminate(rec)

    applied = reset_progress(dep.env, "--topic", tick, "--to", "earliest", "--apply")
    assert applied.splitlines()[-1] == "applied", applied
    dep.recorder()
    await dep.wait_for(
        "the whole new log in both stores, as sent",
        lambda: _stored_exactly(dep, first + later, tick),
        120,
    )
    record_result(
        "topic recreated while down, new log longer than the progress",
        _report(await as_sent.stored(dep.env), first + later, tick),
        produced=FIRST + LATER,
    )


async def test_a_vanished_lake_progress_object_halts(one_partition: Deployment) -> None:
    dep = one_partition
    tick = dep.topics[0]
    first = await _first_recorded(dep)
    settings = as_sent.settings_of(dep.env)
    key = progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tick, 0)
    # The lake holds progress for another partition of the topic (a multi-partition topic's
    # siblings): it was recording this topic, so a missing object vanished.
    with as_sent.aws_credentials_of(dep.env):
        lake = S3Lake(settings)
        await lake.start()
        try:
            stored = await lake.read_progress(key)
            assert stored.offset == FIRST
            sibling = progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tick, 1)
            assert await lake.write_progress(sibling, type(stored)(None, None), 0)
            await lake._client.delete_object(Bucket=settings.S3_BUCKET, Key=key)
        finally:
            await lake.close()

    rec = dep.recorder(wait_ready=None)
    await dep.wait_for(
        "/ready names the vanished progress",
        lambda: _ready_says(rec, "progress_vanished", "no progress in s3"),
        90,
    )
    assert await _stored_exactly(dep, first, tick)
    dep.terminate(rec)
    applied = reset_progress(
        dep.env, "--topic", tick, "--partition", "0", "--to", str(FIRST), "--apply"
    )
    assert applied.splitlines()[-1] == "applied", applied
    later = as_sent.corpus((tick, dep.topics[1]), 1, ticks=LATER, books=0, seed=2, first=FIRST)
    dep.recorder()
    await as_sent.send(dep.env["KAFKA_BROKERS"], later)
    await dep.wait_for(
        "every record once in both stores",
        lambda: _stored_exactly(dep, first + later, tick),
        120,
    )
    record_result(
        "lake progress object deleted while down",
        _report(await as_sent.stored(dep.env), first + later, tick),
        produced=FIRST + LATER,
    )
