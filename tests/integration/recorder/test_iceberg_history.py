"""LAKE_FORMAT=iceberg's history on the real stack: time travel to earlier snapshots (pyiceberg
and DuckDB over its Arrow), and the upkeep commands `datarecorder lake expire-snapshots` and
`datarecorder lake remove-orphans`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

import pytest

from recorder.runtime.settings import TopicKind
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.tools import lake_maintain, verify
from tests.fixtures.stack import RecorderEnv, TopicFactory
from tests.support import as_sent, iceberg
from tests.support.recorder_proc import RecorderProcess

pytestmark = pytest.mark.integration

Where = dict[bytes, tuple[str, int, int]]


def tables_only(env: dict[str, str]) -> dict[str, str]:
    """`env` for a recorder of the Iceberg tables alone, committing small batches often (many
    snapshots, each with its own progress)."""
    return {
        **env,
        "LAKE_FORMAT": "iceberg",
        "DB_WRITE_ENABLED": "false",
        "S3_BATCH_SIZE": "150",
        "S3_BATCH_TIMEOUT_SEC": "0.2",
    }


async def kafka_positions(env: dict[str, str], topics: Sequence[str]) -> Where:
    """Each record's (topic, partition, offset), by its value (every value sent is unique)."""
    read = await verify.read_topics(as_sent.settings_of(env), topics)
    return {m.value: (topic, m.partition, m.offset) for topic, msgs in read.items() for m in msgs}


def expected_below(
    records: Sequence[as_sent.Sent], topic: str, where: Where, progress: dict[tuple[str, int], int]
) -> Counter[Hashable]:
    """The rows of `topic`'s records whose offsets are below `progress` (every field as sent,
    the exact ns)."""
    out: Counter[Hashable] = Counter()
    for r in records:
        if r.topic != topic:
            continue
        t, p, offset = where[r.value]
        if offset < progress.get((t, p), 0):
            out[(r.time_ns, *r.fields)] += 1
    return out


async def record_waves(
    env: dict[str, str], topics: Sequence[str], rec: RecorderProcess, waves: int
) -> list[as_sent.Sent]:
    """Send `waves` corpora one after another, each recorded before the next is sent (so the
    history has snapshots at every wave's end and in between)."""
    records: list[as_sent.Sent] = []
    for wave in range(waves):
        more = as_sent.corpus(
            (topics[0], topics[1]), 2, ticks=1500, books=150, seed=wave, first=wave * 10_000
        )
        await as_sent.send(env["KAFKA_BROKERS"], more)
        records += more
        want = as_sent.wanted(records, topics[0], topics[1])
        await as_sent.wait_stored(
            env, {k: v for k, v in want.items() if k.startswith("lake.")}, [rec]
        )
    return records


async def test_time_travel_reads_exactly_the_records_below_a_snapshots_progress(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Every snapshot read with `scan(snapshot_id=...)` holds exactly the records whose offsets
    are below the progress in its own summary, every field as sent; DuckDB over pyiceberg's
    Arrow reads the same rows."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2, dlq=True)
    env = tables_only(recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics))
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        records = await record_waves(env, topics, rec, 3)
    finally:
        rec.terminate()
    where = await kafka_positions(env, topics[:2])
    partial = 0
    for kind, topic in ((TopicKind.TICK, topics[0]), (TopicKind.ORDERBOOK, topics[1])):
        history = await iceberg.history(env, kind)
        assert len(history) > 3, f"{kind}: too few snapshots to travel through"
        total = sum(1 for r in records if r.topic == topic)
        for snap in history:
            assert snap.offsets is not None, f"{kind} snapshot {snap.snapshot_id}: no progress"
            want = expected_below(records, topic, where, snap.offsets)
            assert snap.rows == want, (
                kind,
                snap.snapshot_id,
                snap.offsets,
                as_sent.differences(want, snap.rows),
            )
            assert snap.duckdb == want, (kind, snap.snapshot_id, "duckdb")
            partial += 0 < sum(want.values()) < total
        assert sum(history[-1].rows.values()) == total
    assert partial >= 4, "no snapshot held part of the records: the test proves nothing"


# --- upkeep -------------------------------------------------------------------------------------
def _files(env: dict[str, str]) -> dict[TopicKind, set[str]]:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        return {
            kind: {f.path for f in lake_maintain.list_files(tables.load(kind))}
            for kind in TopicKind
        }
    finally:
        tables.close()


async def files_under(env: dict[str, str]) -> dict[TopicKind, set[str]]:
    """Every file under each table's location, as the file system names it."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_files, env)


def _plant(env: dict[str, str]) -> dict[TopicKind, set[str]]:
    """What a recorder killed between its upload and its commit leaves: data files uploaded
    with the store's own upload step (`Tables.write_files`), never committed."""
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        out: dict[TopicKind, set[str]] = {}
        for kind in TopicKind:
            table = tables.load(kind)
            rows = table.scan(limit=40).to_arrow()
            io = lake_maintain.file_io(table)
            files = tables.write_files(table, rows)
            assert files, kind
            out[kind] = {lake_maintain.fs_path(io, f.file_path)[2] for f in files}
        return out
    finally:
        tables.close()


async def plant_uncommitted(env: dict[str, str]) -> dict[TopicKind, set[str]]:
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_plant, env)


def _snapshots(env: dict[str, str], kind: TopicKind) -> tuple[list[int], int | None, bool]:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        table = tables.load(kind)
        current = table.current_snapshot()
        carries = lake_maintain.progress_snapshot(table)
        return (
            [s.snapshot_id for s in table.snapshots()],
            current.snapshot_id if current else None,
            carries is not None and carries == (current.snapshot_id if current else None),
        )
    finally:
        tables.close()


async def snapshots(env: dict[str, str], kind: TopicKind) -> tuple[list[int], int | None, bool]:
    """The table's snapshot ids, the current one's, and whether the current one carries the
    progress."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_snapshots, env, kind)


def _refused(env: dict[str, str]) -> set[str]:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        out: set[str] = set()
        for kind in TopicKind:
            table = tables.load(kind)
            io = lake_maintain.file_io(table)
            meta = table.metadata
            logged = {table.metadata_location, *(e.metadata_file for e in meta.metadata_log)}
            known = {lake_maintain.fs_path(io, loc)[2] for loc in logged}
            ids = {str(s.snapshot_id) for s in table.snapshots()}
            for f in lake_maintain.list_files(table):
                name = f.path.rpartition("/")[2]
                if (name.endswith(".metadata.json") and f.path not in known) or (
                    name.startswith("snap-") and name.split("-")[1] not in ids
                ):
                    out.add(f.path)
        return out
    finally:
        tables.close()


async def refused_commits_metadata(env: dict[str, str]) -> set[str]:
    """Metadata files no metadata log names and manifest lists of snapshots the tables do not
    have (what a commit the catalog refused leaves), found by name, not by the tool."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_refused, env)


def _rewrite(env: dict[str, str]) -> None:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        for kind in TopicKind:
            table = tables.load(kind)
            table.overwrite(table.scan().to_arrow())
    finally:
        tables.close()


async def rewrite_without_progress(env: dict[str, str]) -> None:
    """What another writer does: every table's rows rewritten as they are, in a snapshot whose
    summary carries no progress."""
    with as_sent.aws_credentials_of(env):
        await asyncio.to_thread(_rewrite, env)


def listed_paths(stdout: str) -> set[str]:
    return {line.strip() for line in stdout.splitlines() if line.startswith("  ")}


async def test_expire_snapshots_and_remove_orphans_keep_every_record_once(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Uncommitted uploads (a recorder killed before its commit) are exactly what
    remove-orphans lists and deletes; the default threshold keeps young files; expiring leaves
    the current snapshot, which carries the progress and reads every record once; an expired
    snapshot is gone from the table's history; its files are then orphans and removable."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2, dlq=True)
    env = tables_only(recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics))
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        records = await record_waves(env, topics, rec, 2)
    finally:
        rec.terminate()  # older-than 0 below: no recorder may have a commit in flight
    want = as_sent.wanted(records, topics[0], topics[1])
    lake_want = {k: v for k, v in want.items() if k.startswith("lake.")}
    # The commits the recorder's conflicts refused (counted in its log) left their metadata
    # behind: a metadata file the table's log does not name, a snapshot's manifest list of a
    # snapshot the table does not have. Those, and the planted uploads, are the orphans.
    refused = await refused_commits_metadata(env)
    before = await files_under(env)
    planted = await plant_uncommitted(env)

    # The default threshold (3 days) protects files that young: nothing is an orphan yet.
    young = iceberg.lake(env, "remove-orphans", "--dry-run")
    assert listed_paths(young.stdout) == set(), young.stdout
    dry = iceberg.lake(env, "remove-orphans", "--older-than", "0", "--dry-run")
    assert listed_paths(dry.stdout) == set().union(*planted.values(), refused), dry.stdout
    assert await files_under(env) == {k: before[k] | planted[k] for k in TopicKind}
    removed = iceberg.lake(env, "remove-orphans", "--older-than", "0")
    assert '"lake_orphans_removed"' in removed.stdout + removed.stderr
    # Exactly the planted uploads and the refused commits' metadata went.
    assert await files_under(env) == {k: before[k] - refused for k in TopicKind}, removed.stdout
    assert await as_sent.holds_exactly(env, lake_want)

    # Expire everything that may go: the current snapshot stays and carries the progress.
    old, current, carries = await snapshots(env, TopicKind.TICK)
    assert len(old) > 2 and carries and current is not None
    expired = iceberg.lake(env, "expire-snapshots", "--older-than", "0", "--retain-last", "1")
    assert '"lake_snapshots_expired"' in expired.stdout + expired.stderr
    assert f"{len(old) - 1} snapshots expired" in expired.stdout, expired.stdout
    left, still_current, carries = await snapshots(env, TopicKind.TICK)
    assert left == [current] and still_current == current and carries
    assert await iceberg.progress(env) == as_sent.log_ends(records)
    assert await as_sent.holds_exactly(env, lake_want)
    # Time travel to an expired snapshot fails, naming it.
    gone = old[len(old) // 2]
    assert gone not in left
    with pytest.raises(ValueError, match=f"Snapshot not found: {gone}"):
        await iceberg.rows_at(env, TopicKind.TICK, gone)
    assert await iceberg.rows_at(env, TopicKind.TICK, current) == sum(
        lake_want["lake.tick"].values()
    )

    # The expired snapshots' manifest lists are orphans now; nothing the current one reads is.
    expired_files = await files_under(env)
    again = iceberg.lake(env, "remove-orphans", "--older-than", "0")
    after = await files_under(env)
    for kind in TopicKind:
        assert after[kind] < expired_files[kind], (kind, again.stdout)
        gone_files = expired_files[kind] - after[kind]
        assert all("/metadata/snap-" in f for f in gone_files), gone_files  # manifest lists
    assert await as_sent.holds_exactly(env, lake_want)

    # Another tool commits on top (the same rows rewritten, no progress in its summary): the
    # snapshot the progress is read from is no longer the current one, and is kept.
    await rewrite_without_progress(env)
    on_top, _, carries = await snapshots(env, TopicKind.TICK)
    assert len(on_top) > 2 and not carries and on_top[0] == current  # overwrite: delete + add
    kept = iceberg.lake(env, "expire-snapshots", "--older-than", "0", "--retain-last", "1")
    # The progress is found by walking parents from the current snapshot: the one carrying it
    # and every one on the way stay, whatever --retain-last says.
    assert "0 snapshots expired" in kept.stdout, kept.stdout
    assert (await snapshots(env, TopicKind.TICK))[0] == on_top
    assert await iceberg.progress(env) == as_sent.log_ends(records)
    assert await as_sent.holds_exactly(env, lake_want)
