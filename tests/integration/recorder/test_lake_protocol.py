"""DESIGN rule 4 against the real S3 server: a fenced writer cannot change the lake.

Two S3 sinks in this process play the owner and a zombie of one partition (the zombie missed
the rebalance). Whatever the interleaving, the lake must end up holding every offset of the
log exactly once, and a file once written must keep its bytes.
"""

from __future__ import annotations

import io

import aioboto3
import pyarrow.parquet as pq
import pytest

from recorder.core.offsets import TP
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.parquet import legacy_progress_key, progress_key
from recorder.sinks.lake.sink import LakeClaimed, S3Sink
from recorder.sinks.lake.store import S3Lake
from tests.fixtures.stack import RecorderEnv, Stack
from tests.integration.recorder.test_exactly_once_rules import (  # noqa: F401 (a fixture)
    TOPIC,
    TPX,
    aws_credentials,
    noop,
    rows,
    settings_for,
)

pytestmark = pytest.mark.integration


async def lake_files(stack: Stack, bucket: str) -> dict[str, tuple[str, list[int]]]:
    """key -> (ETag, the `volume` column, which the test rows set to their offset)."""
    out: dict[str, tuple[str, list[int]]] = {}
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith(".parquet"):
                    continue
                res = await s3.get_object(Bucket=bucket, Key=obj["Key"])
                async with res["Body"] as stream:
                    table = pq.read_table(io.BytesIO(await stream.read()))
                out[obj["Key"]] = (res["ETag"], table.column("volume").to_pylist())
    return out


def offsets_in(files: dict[str, tuple[str, list[int]]]) -> list[int]:
    return sorted(v for _, volumes in files.values() for v in volumes)


def two_hours(o: int) -> int:
    return 0 if o % 4 else 1  # rows of two event hours interleaved: two files per flush


async def test_zombie_flush_cannot_replace_the_owners_file(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """The issue's reproduction: the owner flushes [0, 100) and records 100; the zombie then
    flushes [0, 60) to the same keys. Before the lake protocol its PUT replaced the owner's
    files (60 rows under progress 100)."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p")
    topics = {TOPIC: TopicKind.TICK}
    zombie_resyncs: list[TP] = []
    zombie = S3Sink(s, topics, S3Lake(s), noop, zombie_resyncs.append)
    owner = S3Sink(s, topics, S3Lake(s), noop, noop)
    await zombie.start()
    await owner.start()
    try:
        zombie.assign(await zombie.load_progress([TPX]))
        owner.assign(await owner.load_progress([TPX]))
        batch = rows(0, 100, two_hours)
        owner.offer(TPX, batch, 100)
        await owner.flush_all([TPX])
        before = await lake_files(stack, fresh_bucket)
        batch = rows(0, 60, two_hours)
        zombie.offer(TPX, batch, 60)
        await zombie.flush_all([TPX])
        after = await lake_files(stack, fresh_bucket)
        assert offsets_in(after) == list(range(100))
        assert after == before  # not one byte of the owner's files changed
        assert (await owner.load_progress([TPX]))[TPX] == 100
        assert zombie_resyncs == [TPX]
    finally:
        await zombie.close()
        await owner.close()


async def test_a_recorded_range_is_flushed_exactly_by_every_writer(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """The zombie recorded the range [0, 60) and stalled before uploading. The new owner, fed
    [0, 100), must flush exactly [0, 60) first; when the zombie wakes and uploads its files
    they are byte for byte the owner's, and its commit is refused."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p")
    topics = {TOPIC: TopicKind.TICK}
    zombie = S3Sink(s, topics, S3Lake(s), noop, noop)
    owner_progress: list[int] = []
    owner = S3Sink(s, topics, S3Lake(s), lambda _tp, off: owner_progress.append(off), noop)
    await zombie.start()
    await owner.start()
    try:
        zombie.assign(await zombie.load_progress([TPX]))
        batch = rows(0, 60, two_hours)
        zombie.offer(TPX, batch, 60)
        stalled = zombie._buffers.open[TPX].take()  # the zombie's flush, stopped after step 1
        from recorder.core.offsets import IntentOutcome

        assert await zombie.store.record_intent(TPX, stalled) is IntentOutcome.RECORDED
        zombie_files = zombie.store.encode_recorded(TPX, TopicKind.TICK, stalled)

        owner.assign(await owner.load_progress([TPX]))
        batch = rows(0, 100, two_hours)
        owner.offer(TPX, batch, 100)
        await owner.flush_all([TPX])
        assert owner_progress == [60, 100]  # the recorded range first, then the rest
        before = await lake_files(stack, fresh_bucket)
        assert offsets_in(before) == list(range(100))

        for key, body, size in zombie_files:  # the zombie wakes up: its PUTs land late
            await zombie.objects.lake.put_file(key, body, size)
            body.close()
        assert await zombie.store.commit(TPX, stalled) is IntentOutcome.FENCED
        after = await lake_files(stack, fresh_bucket)
        assert after == before
    finally:
        await zombie.close()
        await owner.close()


async def test_progress_is_scoped_by_group_and_a_second_group_is_refused(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """Two deployments on one bucket: the group's own progress objects, the legacy (unscoped)
    progress carried over once, and a second group recording the same topic into the same
    prefix refused at start with a message that says what to do."""
    topics = {TOPIC: TopicKind.TICK}
    env = recorder_env(bucket=fresh_bucket)
    legacy = legacy_progress_key("p", TOPIC, 0)
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        await s3.put_object(Bucket=fresh_bucket, Key=legacy, Body=b'{"next_offset": 40}')

    a = settings_for(env, S3_PREFIX="p", KAFKA_GROUP_ID="group-a")
    sink_a = S3Sink(a, topics, S3Lake(a), noop, noop)
    await sink_a.start()
    try:
        progress = await sink_a.load_progress([TPX])
        assert progress == {TPX: 40}  # carried over from the unscoped key
        sink_a.assign(progress)
        batch = rows(40, 10)
        sink_a.offer(TPX, batch, 50)
        await sink_a.flush_all([TPX])
    finally:
        await sink_a.close()
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        res = await s3.get_object(Bucket=fresh_bucket, Key=progress_key("p", "group-a", TOPIC, 0))
        async with res["Body"] as stream:
            assert b'"next_offset": 50' in await stream.read()

    b = settings_for(env, S3_PREFIX="p", KAFKA_GROUP_ID="group-b")
    sink_b = S3Sink(b, topics, S3Lake(b), noop, noop)
    with pytest.raises(LakeClaimed, match=r"group-a.*own S3_PREFIX"):
        await sink_b.start()
    await sink_b.close()

    other_prefix = settings_for(env, S3_PREFIX="q", KAFKA_GROUP_ID="group-b")
    sink_q = S3Sink(other_prefix, topics, S3Lake(other_prefix), noop, noop)
    await sink_q.start()  # its own prefix: no conflict
    try:
        assert await sink_q.load_progress([TPX]) == {TPX: None}
    finally:
        await sink_q.close()


async def test_the_s3_server_honours_conditional_writes(
    fresh_bucket: str, recorder_env: RecorderEnv
) -> None:
    """The start-up check passes on the stack's server (the refusal is a unit test)."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p")
    lake = S3Lake(s)
    await lake.start()
    try:
        await lake.check_conditional_writes("p/_recorder/groups/g/probe/")
    finally:
        await lake.close()
