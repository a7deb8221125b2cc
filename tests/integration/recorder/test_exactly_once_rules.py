"""DESIGN's three rules of exactly-once, each shown against the real stores.

1. fenced progress: a zombie's batch is refused (database here; S3, with the lake's contents,
   in test_lake_protocol.py);
2. one unrecorded file per partition: a replay overwrites the leftover file of a crash;
3. revocation waits: after on_revoked returns, nothing of the revoked partitions is pending.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioboto3
import asyncpg
import pyarrow as pa
import pytest

from recorder.core.columns import from_rows
from recorder.core.offsets import TP
from recorder.core.records import TickRow
from recorder.kafka.dlq import DeadLetters
from recorder.kafka.options import client_options
from recorder.runtime.settings import Settings, TopicKind, load_settings
from recorder.sinks.lake.sink import S3Sink
from recorder.sinks.lake.store import S3Lake
from recorder.sinks.timescale.sink import TimescaleSink
from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory

pytestmark = pytest.mark.integration

T0 = int(time.time() // 3600 * 3600 - 7200) * 10**9
TOPIC = "rules.market.tick"
TPX = TP(TOPIC, 0)


def rows(first: int, n: int, hour_of: Any = None) -> pa.Table:
    """Ticks at offsets [first, first + n) as the columns a sink is offered."""
    offsets = list(range(first, first + n))
    out = []
    for o in offsets:
        hour = hour_of(o) if hour_of else 0
        out.append(TickRow(T0 + hour * 3600 * 10**9 + o * 1000, "AAA", 100.0 + o, o, None, None))
    return from_rows(TopicKind.TICK, offsets, out)


@pytest.fixture(autouse=True)
def aws_credentials(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sinks run in this process here, and boto reads credentials from its environment."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        if key in stack.env:
            monkeypatch.setenv(key, stack.env[key])


def settings_for(env: dict[str, str], **extra: Any) -> Settings:
    kw: dict[str, Any] = {k: v for k, v in env.items() if k in Settings.model_fields}
    kw.update(
        {
            "KAFKA_TOPICS": TOPIC,
            "BATCH_TIMEOUT_MS": 50,
            "S3_BATCH_TIMEOUT_SEC": 0.1,
            "DB_WRITE_WORKERS": 1,
        }
    )
    kw.update(extra)
    return load_settings(**kw)


def noop(*_: Any) -> None:
    return None


class SlowLake(S3Lake):
    """The real S3 lake with a delay before each file upload, and a record of how many uploads
    of one partition run at once (rule 2) and when the last one ended (rule 3)."""

    def __init__(self, settings: Settings, delay: float) -> None:
        super().__init__(settings)
        self.delay = delay
        self.running = 0
        self.most_at_once = 0
        self.uploads = 0

    async def put_file(self, key: str, body: Any, size: int) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.delay)
            await super().put_file(key, body, size)
            self.uploads += 1
        finally:
            self.running -= 1


async def test_rule1_database_zombie_cannot_commit_behind_new_owner(
    fresh_database: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    s = settings_for(recorder_env(database=fresh_database))
    topics = {TOPIC: TopicKind.TICK}
    resyncs: list[TP] = []
    zombie = TimescaleSink(s, topics, DeadLetters(s, client_options(s)), noop, noop)
    owner = TimescaleSink(s, topics, DeadLetters(s, client_options(s)), noop, resyncs.append)
    await zombie.start()
    await owner.start()
    try:
        # both believe they own partition 0 from offset 0 (the zombie missed the rebalance)
        zombie.assign({TPX: None})
        owner.assign({TPX: None})
        batch = rows(0, 100)
        owner.offer(TPX, batch, 100)
        await owner.flush_all([TPX])
        batch = rows(0, 60)
        zombie.offer(TPX, batch, 60)
        await zombie.flush_all([TPX])
        conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
        try:
            assert await conn.fetchval("SELECT count(*) FROM tick_data") == 100
            assert await conn.fetchval("SELECT next_offset FROM recorder_offsets") == 100
        finally:
            await conn.close()
        assert zombie.progress()[TPX] == 100  # it learnt the stored progress and dropped its batch
        # a retry of an already committed batch is recognised, not written twice
        owner.revoke([TPX])
        owner.assign({TPX: 40})  # stale view: progress 40, while the database holds 100
        batch = rows(40, 60)
        owner.offer(TPX, batch, 100)
        await owner.flush_all([TPX])
        conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
        try:
            assert await conn.fetchval("SELECT count(*) FROM tick_data") == 100
        finally:
            await conn.close()
    finally:
        await zombie.close()
        await owner.close()


async def _keys(stack: Stack, bucket: str) -> dict[str, int]:
    out: dict[str, int] = {}
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
    return out


async def test_rule2_replay_overwrites_the_leftover_of_a_crash(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    """A crash after uploading [0, 300) but before recording progress leaves files keyed by the
    range's first offset; a replay from 0 with other flush boundaries overwrites them (its first
    range starts at 0 too) and keys the rest by its own ranges: every offset once."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p")
    topics = {TOPIC: TopicKind.TICK}

    def hour_of(o: int) -> int:
        return 0 if o % 3 else 1  # two event hours interleaved, as around an hour boundary

    crashed = S3Sink(s, topics, S3Lake(s), noop, noop)
    await crashed.start()
    try:
        crashed.assign({TPX: None})
        batch = rows(0, 300, hour_of)
        # encode and upload like a flush, then "crash" before the progress is recorded
        from recorder.core.batching import Batch

        whole = Batch(None, 300, [batch], batch.num_rows)
        files = crashed.store.encode(TPX, TopicKind.TICK, whole, crashed.store.config.encoder, 0)
        for key, body, size in files:
            await crashed.objects.lake.put_file(key, body, size)
    finally:
        await crashed.close()
    leftover = await _keys(stack, fresh_bucket)
    assert len([k for k in leftover if k.endswith(".parquet")]) == 2

    replay = S3Sink(s, topics, S3Lake(s), noop, noop)
    await replay.start()
    try:
        progress = await replay.load_progress([TPX])
        assert progress == {TPX: None}
        replay.assign(progress)
        for first in range(0, 300, 70):  # other flush boundaries than the crashed run
            batch = rows(first, min(70, 300 - first), hour_of)
            replay.offer(TPX, batch, first + len(batch))
            await replay.flush_all([TPX])
    finally:
        await replay.close()
    # every row exactly once across the files, and the leftover keys were overwritten
    import io

    import pyarrow.parquet as pq

    total = 0
    seen: set[int] = set()
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        for key in await _keys(stack, fresh_bucket):
            if not key.endswith(".parquet"):
                continue
            res = await s3.get_object(Bucket=fresh_bucket, Key=key)
            async with res["Body"] as stream:
                table = pq.read_table(io.BytesIO(await stream.read()))
            volumes = table.column("volume").to_pylist()
            total += len(volumes)
            seen.update(volumes)
    assert total == 300 and seen == set(range(300))


async def test_rule2_one_unrecorded_upload_per_partition(
    fresh_bucket: str, recorder_env: RecorderEnv
) -> None:
    """Three batches become due while the first upload is still running: the next upload of
    the partition starts only after the previous one's progress is recorded."""
    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PREFIX="p", S3_BATCH_SIZE=100)
    lake = SlowLake(s, delay=0.5)
    recorded: list[int] = []
    resyncs: list[TP] = []
    sink = S3Sink(
        s, {TOPIC: TopicKind.TICK}, lake, lambda _tp, o: recorded.append(o), resyncs.append
    )
    await sink.start()
    try:
        sink.assign(await sink.load_progress([TPX]))
        for first in (0, 100, 200):  # each offer fills a batch: due at once
            batch = rows(first, 100)
            sink.offer(TPX, batch, first + 100)
            await asyncio.sleep(0.05)
        await sink.flush_all([TPX])
    finally:
        await sink.close()
    assert lake.most_at_once == 1
    assert recorded[-1] == 300 and recorded == sorted(recorded)
    assert resyncs == []  # nothing was fenced: no upload raced its predecessor


async def test_rule3_revocation_waits_for_in_flight_work(
    kafka_topics: TopicFactory, fresh_database: str, fresh_bucket: str, recorder_env: RecorderEnv
) -> None:
    """A revocation that arrives while an upload is in flight returns only after that upload
    and its progress are recorded (and the buffered rest flushed)."""
    from recorder.app import build_recorder

    topics = await kafka_topics("market.tick", partitions=2)
    env = recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics)
    kw: dict[str, Any] = {k: v for k, v in env.items() if k in Settings.model_fields}
    kw.update(
        {
            "BATCH_TIMEOUT_MS": 60_000,
            "S3_BATCH_TIMEOUT_SEC": 600,
            "BATCH_SIZE": 10**6,
            "S3_BATCH_SIZE": 300,
        }
    )
    s = load_settings(**kw)
    rec = build_recorder(s)
    (s3,) = [sink for sink in rec.sinks if isinstance(sink, S3Sink)]
    lake = SlowLake(s, delay=1.5)
    s3.objects.lake = lake
    for sink in rec.sinks:
        await sink.start()
    try:
        tp = TP(topics[0], 0)
        for sink in rec.sinks:
            sink.assign({tp: None})
        batch = rows(0, 300)
        for sink in rec.sinks:
            sink.offer(tp, batch, 300)
        deadline = time.monotonic() + 10
        while lake.running == 0:  # the first 300 rows are being uploaded
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        batch = rows(300, 200)  # and more arrive behind them
        for sink in rec.sinks:
            sink.offer(tp, batch, 500)

        class Source:
            index = 0

            async def commit(self, offsets: Any) -> None:
                return None

        await rec.rebalance.on_revoked(Source(), {tp})  # type: ignore[arg-type]
        assert lake.running == 0 and lake.uploads == 2
        assert all(sink.buffered() == 0 for sink in rec.sinks)
        assert [await sink.load_progress([tp]) for sink in rec.sinks] == [{tp: 500}, {tp: 500}]
    finally:
        for sink in rec.sinks:
            await sink.close()
    await asyncio.sleep(0)


async def test_large_files_are_uploaded_in_parts(
    fresh_bucket: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    import io

    s = settings_for(recorder_env(bucket=fresh_bucket), S3_PART_SIZE_MB=5)
    lake = S3Lake(s)
    await lake.start()
    try:
        body = io.BytesIO(bytes(range(256)) * (12 * 4096))  # 12 MiB: three parts of 5 MiB
        await lake.put_file("big/file.parquet", body, body.getbuffer().nbytes)
    finally:
        await lake.close()
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        head = await s3.head_object(Bucket=fresh_bucket, Key="big/file.parquet")
    assert head["ContentLength"] == 12 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
