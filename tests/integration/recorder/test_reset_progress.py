"""`datarecorder reset-progress` on the real stack: it never makes a store record a row twice.

(a) a partition a running recorder owns is refused, naming the member, and nothing changes;
(b) progress that changed between the read and the write is not overwritten (both stores);
(c) a database rewind is refused, a forward move is applied, and a recorder started afterwards
    records exactly the records from the new progress on;
(d) the lake's progress object carries a generation that grows across a rewind, so the ETag a
    writer read before the rewind no longer passes its If-Match;
(e) a lake partition with a pending flush that the log still holds is refused.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from recorder.core.offsets import TP
from recorder.core.reset_plan import plan
from recorder.runtime.settings import Settings
from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import StoredProgress, make_lake
from recorder.sinks.timescale.migrate import migrate
from recorder.tools.reset_progress import APPLIED, CHANGED, apply, read, reset_progress
from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.integration.faults.harness import S3_PREFIX, Deployment
from tests.support import as_sent
from tests.support.recorder_proc import reset_progress as run_reset_cli

pytestmark = pytest.mark.integration

FIRST, LATER, SKIP_TO = 500, 1000, 1000


@pytest.fixture(autouse=True)
def aws_credentials(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some tests run the command's functions in this process; boto reads its credentials from
    the environment, as in the recorder."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        if key in stack.env:
            monkeypatch.setenv(key, stack.env[key])


async def lake_objects(dep: Deployment) -> dict[str, tuple[str, bytes]]:
    """Every progress object of the group: (ETag, body) by key."""
    import aioboto3

    out: dict[str, tuple[str, bytes]] = {}
    async with aioboto3.Session().client("s3", **dep.stack.s3_client_kwargs()) as s3:
        prefix = f"{S3_PREFIX}/_recorder/groups/{dep.env['KAFKA_GROUP_ID']}/progress/"
        listed = await s3.list_objects_v2(Bucket=dep.env["S3_BUCKET"], Prefix=prefix)
        for obj in listed.get("Contents", []):
            res = await s3.get_object(Bucket=dep.env["S3_BUCKET"], Key=obj["Key"])
            async with res["Body"] as stream:
                out[obj["Key"]] = (res["ETag"], await stream.read())
    return out


async def recorded_first(dep: Deployment) -> tuple[Any, list[as_sent.Sent]]:
    """FIRST ticks recorded by a running recorder (returned, still running) into both stores."""
    tick = dep.topics[0]
    first = as_sent.corpus((tick, dep.topics[1]), 1, ticks=FIRST, books=0, seed=1)
    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="earliest")
    await as_sent.send(dep.env["KAFKA_BROKERS"], first)
    await dep.wait_drained({(tick, 0): FIRST}, limit_s=120, what="first batch")
    return rec, first


async def test_refused_while_a_running_recorder_owns_the_partition(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    tick = dep.topics[0]
    rec, _ = await recorded_first(dep)
    await dep.wait_owned([rec])
    before = (await dep.progress(), await lake_objects(dep))

    code, out = run_reset_cli(dep.env, "--topic", tick, "--to", "earliest", "--apply")
    assert code == 1, out
    assert "refused" in out and "running member" in out and "stop the recorder" in out, out
    assert "client datarecorder-0" in out and "host " in out, out  # names the member
    assert "applied" not in out.splitlines()[-1], out
    assert (await dep.progress(), await lake_objects(dep)) == before  # nothing written

    dep.terminate(rec)
    code, out = run_reset_cli(dep.env, "--topic", tick, "--to", "latest")  # dry run, now allowed
    assert code == 0 and "dry run" in out, out


async def test_a_change_between_read_and_write_is_not_overwritten(
    stack: Stack,
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
) -> None:
    [tick] = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(database=fresh_database, bucket=fresh_bucket, topics=[tick])
    settings = as_sent.settings_of(env)
    tp = TP(tick, 0)
    ticks = as_sent.corpus((tick, "unused"), 1, ticks=300, books=0, seed=3)
    await as_sent.send(env["KAFKA_BROKERS"], ticks)
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    lake = make_lake(settings)
    await lake.start()
    key = progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tick, 0)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO recorder_offsets (topic, partition, next_offset) VALUES ($1, 0, 100)", tick
        )
        assert await lake.write_progress(key, StoredProgress(None, None), 100) is not None

        was = await read(settings, lake, tick, None)
        changes = plan(was.current(), was.bounds, "200", was.owners)
        assert [c.refusal for c in changes] == [None, None] and all(c.moves for c in changes)
        # A recorder moves both stores' progress between the read and the write.
        await conn.execute("UPDATE recorder_offsets SET next_offset = 150")
        assert await lake.write_progress(key, was.lake[tp], 150) is not None  # type: ignore[index]

        done = await apply(settings, lake, was, changes)
        assert done == {(tp, "timescaledb"): CHANGED, (tp, "s3"): CHANGED}
        assert await conn.fetchval("SELECT next_offset FROM recorder_offsets") == 150
        assert (await lake.read_progress(key)).offset == 150

        # Read again, the same move applies (and a row that is absent is inserted only then).
        was = await read(settings, lake, tick, None)
        changes = plan(was.current(), was.bounds, "200", was.owners)
        assert await apply(settings, lake, was, changes) == {
            (tp, "timescaledb"): APPLIED,
            (tp, "s3"): APPLIED,
        }
        assert await conn.fetchval("SELECT next_offset FROM recorder_offsets") == 200
        assert (await lake.read_progress(key)).offset == 200
    finally:
        await lake.close()
        await conn.close()


async def test_database_rewind_refused_forward_move_applied_then_recorded_exactly(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    tick = dep.topics[0]
    rec, first = await recorded_first(dep)
    dep.terminate(rec)
    later = as_sent.corpus((tick, dep.topics[1]), 1, ticks=LATER, books=0, seed=2, first=FIRST)
    await as_sent.send(dep.env["KAFKA_BROKERS"], later)
    before = await dep.progress()
    book = {(dep.topics[1], 0): 0}  # the order book topic's start, stored at assignment
    assert before["timescaledb"] == before["s3"] == {(tick, 0): FIRST, **book}

    code, out = run_reset_cli(dep.env, "--topic", tick, "--to", "200", "--apply")
    assert code == 1, out
    assert f"rewind from {FIRST} to 200" in out and "recorded twice" in out, out
    assert f"offsets 200..{FIRST - 1}" in out, out
    assert await dep.progress() == before  # refused: nothing written, in either store

    code, out = run_reset_cli(dep.env, "--topic", tick, "--to", str(SKIP_TO), "--apply")
    assert code == 0 and out.splitlines()[-1] == "applied", out
    moved = {(tick, 0): SKIP_TO, **book}
    assert await dep.progress() == {"timescaledb": moved, "s3": moved}

    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="earliest")
    await dep.wait_drained({(tick, 0): FIRST + LATER}, limit_s=120, what="after the reset")
    kept = first + later[SKIP_TO - FIRST :]  # one partition: list order is offset order
    want = {
        "db.tick": as_sent.expected(kept, tick, micros=True),
        "lake.tick": as_sent.expected(kept, tick, micros=False),
    }
    got = await as_sent.stored(dep.env)
    for name, expected in want.items():
        assert got[name] == expected, (name, as_sent.differences(expected, got[name]))


async def test_lake_generation_grows_across_a_rewind_and_a_stale_token_fails(
    stack: Stack, kafka_topics: TopicFactory, fresh_bucket: str, recorder_env: RecorderEnv
) -> None:
    """The topic was recreated (empty log, progress 50 beyond its end): the rewind to 0 is the
    resolution. The object then holds offset 0 again, as it did before the first flush; a writer
    still holding that first object's ETag must be fenced."""
    [tick] = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(bucket=fresh_bucket, topics=[tick], db_write_enabled="false")
    settings: Settings = as_sent.settings_of(env)
    lake = make_lake(settings)
    await lake.start()
    key = progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tick, 0)
    try:
        # The sink's own sequence: a start at 0, the intent [0, 50), the commit to 50.
        none = StoredProgress(None, None)
        start = none.successor(str(await lake.write_progress(key, none, 0)), 0)
        stale = await lake.read_progress(key)  # what a writer that stalls now holds
        assert stale == start and stale.generation == 1
        token = await lake.write_progress(key, stale, 0, 50)
        intent = stale.successor(str(token), 0, 50)
        token = await lake.write_progress(key, intent, 50)
        assert (await lake.read_progress(key)).generation == 3

        report, ok = await reset_progress(settings, tick, None, "earliest", True)
        assert ok and report.splitlines()[-1] == "applied", report
        after = await lake.read_progress(key)
        assert (after.offset, after.flush_end, after.generation) == (0, None, 4)
        assert after.token != stale.token
        # The stalled writer wakes up and records its intent on what it read: refused.
        assert await lake.write_progress(key, stale, 0, 40) is None
        assert await lake.read_progress(key) == after
    finally:
        await lake.close()


async def test_a_pending_lake_flush_the_log_holds_is_refused(
    kafka_topics: TopicFactory, fresh_bucket: str, recorder_env: RecorderEnv
) -> None:
    """A recorder stopped between recording the range [100, 150) and committing it: moving the
    progress would orphan the range's files that are already up. Refused, object untouched."""
    [tick] = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(bucket=fresh_bucket, topics=[tick], db_write_enabled="false")
    await as_sent.send(
        env["KAFKA_BROKERS"], as_sent.corpus((tick, "unused"), 1, ticks=300, books=0, seed=4)
    )
    settings = as_sent.settings_of(env)
    lake = make_lake(settings)
    await lake.start()
    key = progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tick, 0)
    try:
        none = StoredProgress(None, None)
        start = none.successor(str(await lake.write_progress(key, none, 100)), 100)
        assert await lake.write_progress(key, start, 100, 150) is not None
        pending = await lake.read_progress(key)

        report, ok = await reset_progress(settings, tick, None, "latest", True)
        assert not ok and report.splitlines()[-1] == "refused: nothing written", report
        assert "flush of offsets [100, 150) is pending" in report and "orphan" in report, report
        assert await lake.read_progress(key) == pending
    finally:
        await lake.close()
