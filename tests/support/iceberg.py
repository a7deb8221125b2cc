"""The Iceberg tables of a test's recorder, read as a reader would (pyiceberg, no recorder code
path that writes): the progress in the current snapshots, the data files, the rows, and the
rows and progress of earlier snapshots (time travel).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from recorder.core.offsets import TP
from recorder.runtime.settings import TopicKind
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.iceberg.progress import from_summary
from tests.support import as_sent


def _read(env: dict[str, str]) -> dict[str, Any]:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        out: dict[str, Any] = {"offsets": {}, "topic_ids": {}, "files": {}, "snapshots": {}}
        for kind in TopicKind:
            table = tables.load(kind)
            progress = tables.progress(table)
            out["offsets"].update(progress.offsets)
            out["topic_ids"].update(progress.topic_ids)
            out["files"][kind.value] = [task.file for task in table.scan().plan_files()]
            out["snapshots"][kind.value] = list(table.snapshots())
        return out
    finally:
        tables.close()


async def read(env: dict[str, str]) -> dict[str, Any]:
    """`offsets` (TP -> next offset) and `topic_ids` (topic -> Kafka topic ID) of both tables,
    `files` and `snapshots` per table."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_read, env)


async def progress(env: dict[str, str]) -> dict[tuple[str, int], int] | None:
    """The tables' progress as (topic, partition) -> next offset; None while unreadable."""
    try:
        offsets: dict[TP, int] = (await read(env))["offsets"]
    except Exception:  # the catalog or the warehouse is down, or no table yet
        return None
    return {(tp.topic, tp.partition): n for tp, n in offsets.items()}


def _duckdb_rows(env: dict[str, str], kind: TopicKind) -> int:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        con = tables.load(kind).scan().to_duckdb(kind.value)
        rows = con.execute(f"SELECT count(*) FROM {kind.value}").fetchall()
        return int(rows[0][0])
    finally:
        tables.close()


async def duckdb_rows(env: dict[str, str], kind: TopicKind) -> int:
    """The rows of a table as DuckDB reads them through pyiceberg's scan (docs/iceberg.md)."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_duckdb_rows, env, kind)


# --- time travel ------------------------------------------------------------------------------
def counter(kind: TopicKind, table: Any) -> Counter[Hashable]:
    """The rows of an Arrow table of `kind`'s Iceberg table by content, keyed as
    `as_sent.expected(..., micros=False)` keys what was sent (`datarecorder verify`'s keys)."""
    from recorder.core.kinds import kind_of
    from recorder.sinks.lake.parquet import LAYOUTS
    from recorder.tools.verify import row_key

    spec = kind_of(kind)
    times = [int(t) for t in table.column("timestamp_ns").to_pylist()]
    columns = [table.column(c.name).to_pylist() for c in LAYOUTS[kind]]
    found: Counter[Hashable] = Counter()
    for i, ts in enumerate(times):
        found[row_key(spec, ts, [c[i] for c in columns])] += 1
    return found


@dataclass(frozen=True)
class SnapshotRead:
    """A snapshot of a table, the progress its summary carries (None: none), and its rows read
    by pyiceberg (`scan(snapshot_id=...)`) and by DuckDB over that scan's Arrow."""

    snapshot_id: int
    offsets: dict[tuple[str, int], int] | None
    rows: Counter[Hashable]
    duckdb: Counter[Hashable]


def _history(env: dict[str, str], kind: TopicKind, every: int) -> list[SnapshotRead]:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        table = tables.load(kind)
        out = []
        snapshots = list(table.snapshots())
        chosen = {*snapshots[::every], snapshots[-1]}
        for snap in snapshots:
            if snap not in chosen:
                continue
            props = snap.summary.additional_properties if snap.summary else {}
            found = from_summary(props, "test")
            offsets = (
                None
                if found is None
                else {(tp.topic, tp.partition): n for tp, n in found.offsets.items()}
            )
            arrow = table.scan(snapshot_id=snap.snapshot_id).to_arrow()
            con = table.scan(snapshot_id=snap.snapshot_id).to_duckdb("snap")
            seen = con.sql("SELECT * FROM snap").to_arrow_table()
            out.append(
                SnapshotRead(snap.snapshot_id, offsets, counter(kind, arrow), counter(kind, seen))
            )
        return out
    finally:
        tables.close()


async def history(env: dict[str, str], kind: TopicKind, every: int = 1) -> list[SnapshotRead]:
    """Every `every`-th snapshot of `kind`'s table (oldest first, the current one always)."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_history, env, kind, every)


def _scan_at(env: dict[str, str], kind: TopicKind, snapshot_id: int) -> int:
    tables = Tables(IcebergConfig.of(as_sent.settings_of(env)))
    try:
        return int(tables.load(kind).scan(snapshot_id=snapshot_id).to_arrow().num_rows)
    finally:
        tables.close()


async def rows_at(env: dict[str, str], kind: TopicKind, snapshot_id: int) -> int:
    """The number of rows of `kind`'s table at `snapshot_id` (pyiceberg's time travel)."""
    with as_sent.aws_credentials_of(env):
        return await asyncio.to_thread(_scan_at, env, kind, snapshot_id)


def lake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`datarecorder lake ARGS`."""
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "lake", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res
