"""Rule 4 whatever the pods' configuration, against the real S3 server.

A recorded range [N, E) is written by whoever completes it: its first writer, a zombie of it, a
new owner after a crash — pods that may run with other settings during a rollout. Its files must
have the same keys and rows whoever writes them: keys name the range's first offset (not the
first record of the hour that survived validation), the range carries the encoder of the writer
that recorded it and every writer encodes with that one, or refuses when its validation limit
differs.
"""

from __future__ import annotations

import io
from typing import Any

import aioboto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recorder.core.offsets import IntentOutcome
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.sink import S3Sink
from recorder.sinks.lake.store import S3Lake, StoredProgress
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

TOPICS = {TOPIC: TopicKind.TICK}


def two_hours(o: int) -> int:
    return 0 if o % 4 else 1  # rows of two event hours interleaved: two files per range


async def parquet_files(stack: Stack, bucket: str) -> dict[str, tuple[str, pa.Table]]:
    """key -> (ETag, table) of every Parquet file in the bucket."""
    out: dict[str, tuple[str, pa.Table]] = {}
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".parquet"):
                    res = await s3.get_object(Bucket=bucket, Key=obj["Key"])
                    async with res["Body"] as stream:
                        table = pq.read_table(io.BytesIO(await stream.read()))
                    out[obj["Key"]] = (res["ETag"], table)
    return out


def names(files: dict[str, Any]) -> set[str]:
    """`h<i>/o<offset in the key>` of each file, h0 the earlier event hour, h1 the later."""
    hours = sorted({k.split("/")[-2] for k in files})
    return {
        f"h{hours.index(k.split('/')[-2])}/{k.rsplit('-', 1)[-1].removesuffix('.parquet')}"
        for k in files
    }


async def dictionary_columns(stack: Stack, bucket: str) -> dict[str, set[str]]:
    """`h<i>/o<offset>` of each Parquet file -> the columns it dictionary-encodes."""
    out: dict[str, set[str]] = {}
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        for obj in listed.get("Contents", []):
            if obj["Key"].endswith(".parquet"):
                res = await s3.get_object(Bucket=bucket, Key=obj["Key"])
                async with res["Body"] as stream:
                    meta = pq.ParquetFile(io.BytesIO(await stream.read())).metadata
                out[obj["Key"]] = {
                    meta.row_group(0).column(i).path_in_schema
                    for i in range(meta.num_columns)
                    if meta.row_group(0).column(i).has_dictionary_page
                }
    hours = sorted({k.split("/")[-2] for k in out})
    return {
        f"h{hours.index(k.split('/')[-2])}/{k.rsplit('-', 1)[-1].removesuffix('.parquet')}": v
        for k, v in out.items()
    }


def offsets(files: dict[str, tuple[str, pa.Table]]) -> list[int]:
    return sorted(v for _, t in files.values() for v in t.column("volume").to_pylist())


async def test_a_range_recorded_under_other_parquet_options_is_completed_with_them(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """A pod with PARQUET_TIMESTAMP_UNIT=us recorded [0, 60) and stalled; the new owner runs
    with ns. The owner writes [0, 60) as the range's recorder would (us), the rest its own way,
    and the zombie's late upload then leaves every byte as it was."""
    env = recorder_env(bucket=fresh_bucket)
    zombie_settings = settings_for(env, S3_PREFIX="p", PARQUET_TIMESTAMP_UNIT="us")
    owner_settings = settings_for(env, S3_PREFIX="p", PARQUET_TIMESTAMP_UNIT="ns")
    zombie = S3Sink(zombie_settings, TOPICS, S3Lake(zombie_settings), noop, noop)
    owner = S3Sink(owner_settings, TOPICS, S3Lake(owner_settings), noop, noop)
    await zombie.start()
    await owner.start()
    try:
        zombie.assign(await zombie.load_progress([TPX]))
        zombie.offer(TPX, rows(0, 60, two_hours), 60)
        stalled = zombie._buffers.open[TPX].take()
        assert await zombie.store.record_intent(TPX, stalled) is IntentOutcome.RECORDED
        zombie_files = zombie.store.encode_recorded(TPX, TopicKind.TICK, stalled)

        owner.assign(await owner.load_progress([TPX]))
        owner.offer(TPX, rows(0, 100, two_hours), 100)
        await owner.flush_all([TPX])
        before = await parquet_files(stack, fresh_bucket)
        assert offsets(before) == list(range(100))
        units = {
            k.rsplit("-", 1)[-1]: t.schema.field("timestamp").type.unit
            for k, (_, t) in before.items()
        }
        assert units == {
            "o00000000000000000000.parquet": "us",
            "o00000000000000000060.parquet": "ns",
        }

        for key, body, size in zombie_files:
            await zombie.objects.lake.put_file(key, body, size)
            body.close()
        assert await parquet_files(stack, fresh_bucket) == before  # same keys, same bytes
    finally:
        await zombie.close()
        await owner.close()


async def test_a_range_recorded_under_another_validation_limit_is_refused_loudly(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """Rows depend on MAX_MESSAGE_BYTES (what is too large becomes a dead letter): a writer with
    another limit than the range's recorder does not write the range; it fails its flush with an
    error naming the limit to set, uploads nothing and leaves the range pending. A writer with
    the recorded limit then completes it."""
    env = recorder_env(bucket=fresh_bucket)
    small = settings_for(env, S3_PREFIX="p", MAX_MESSAGE_BYTES=2048)
    large = settings_for(env, S3_PREFIX="p", MAX_MESSAGE_BYTES=4096)
    first = S3Sink(small, TOPICS, S3Lake(small), noop, noop)
    await first.start()
    try:
        first.assign(await first.load_progress([TPX]))
        first.offer(TPX, rows(0, 60, two_hours), 60)
        assert await first.store.record_intent(TPX, first._buffers.open[TPX].take()) is (
            IntentOutcome.RECORDED
        )
    finally:
        await first.close()

    other = S3Sink(large, TOPICS, S3Lake(large), noop, noop)
    await other.start()
    try:
        other.assign(await other.load_progress([TPX]))
        other.offer(TPX, rows(0, 60, two_hours), 60)
        await other.flush_all([TPX])
        assert "MAX_MESSAGE_BYTES=2048" in other.health().reason
        assert not await other.check_health()
        assert await parquet_files(stack, fresh_bucket) == {}
        stored = await other.objects.read(TPX)
        assert (stored.offset, stored.flush_end) == (0, 60)
    finally:
        await other.close()

    same = S3Sink(small, TOPICS, S3Lake(small), noop, noop)
    await same.start()
    try:
        same.assign(await same.load_progress([TPX]))
        same.offer(TPX, rows(0, 60, two_hours), 60)
        await same.flush_all([TPX])
        assert offsets(await parquet_files(stack, fresh_bucket)) == list(range(60))
        assert (await same.load_progress([TPX]))[TPX] == 60
    finally:
        await same.close()


async def test_a_file_key_names_its_range_not_the_records_that_survived_validation(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """The range [0, 100) whose first record was a dead letter (no row at offset 0): its files
    are keyed by 0, the range's first offset, in both hours — the key a writer whose validation
    kept record 0 would use too."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p")
    sink = S3Sink(s, TOPICS, S3Lake(s), noop, noop)
    await sink.start()
    try:
        sink.assign(await sink.store_start({TPX: 0}))
        sink.offer(TPX, rows(1, 99, two_hours), 100)
        await sink.flush_all([TPX])
        files = await parquet_files(stack, fresh_bucket)
        assert offsets(files) == list(range(1, 100))
        assert names(files) == {"h0/o00000000000000000000", "h1/o00000000000000000000"}
    finally:
        await sink.close()


async def test_a_range_an_older_release_recorded_is_completed_under_its_keys(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """A pending range recorded without an encoder (a pod of a release before it; its files may
    already be in the lake) is completed under that release's keys — the first offset of each
    hour's rows — so its files are overwritten rather than doubled; later ranges use range keys."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p")
    sink = S3Sink(s, TOPICS, S3Lake(s), noop, noop)
    await sink.start()
    try:
        key = sink.objects.key(TPX)
        none = StoredProgress(None, None)
        token = await sink.objects.lake.write_progress(key, none, 0)
        assert token is not None
        assert (
            await sink.objects.lake.write_progress(key, none.successor(token, 0), 0, 60) is not None
        )
        sink.assign(await sink.load_progress([TPX]))
        sink.offer(TPX, rows(0, 100, two_hours), 100)
        await sink.flush_all([TPX])
        files = await parquet_files(stack, fresh_bucket)
        assert offsets(files) == list(range(100))
        # [0, 60): hour 1 holds offsets 0, 4, ...; hour 0 starts at 1. [60, 100): range keys.
        assert names(files) == {
            "h1/o00000000000000000000",
            "h0/o00000000000000000001",
            "h0/o00000000000000000060",
            "h1/o00000000000000000060",
        }
        # That release's encoding too (every column dictionary-encoded), ours after it.
        encoded = await dictionary_columns(stack, fresh_bucket)
        columns = set(next(iter(files.values()))[1].column_names)
        assert encoded == {
            "h1/o00000000000000000000": columns,
            "h0/o00000000000000000001": columns,
            "h0/o00000000000000000060": {"symbol"},
            "h1/o00000000000000000060": {"symbol"},
        }
        assert (await sink.load_progress([TPX]))[TPX] == 100
    finally:
        await sink.close()
