"""The Iceberg tables of a test's recorder, read as a reader would (pyiceberg, no recorder code
path that writes): the progress in the current snapshots, the data files, the rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from recorder.core.offsets import TP
from recorder.runtime.settings import TopicKind
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
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
