"""Retention run by the recorder (DB_RETENTION_DAYS): which rows are old enough to go, per mode.

Owns the choice of day partitions to drop (pure) and the one statement per table that drops
them: `drop_chunks` on TimescaleDB hypertables, `DROP TABLE` of whole day partitions on plain
PostgreSQL. Only whole days (chunks) older than the cutoff go; rollups are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from recorder.core.kinds import all_kinds
from recorder.runtime import telemetry
from recorder.sinks.timescale.migrate import DbMode

SECONDS_PER_DAY = 86_400
_DAY_PARTITION = re.compile(r"^(?P<parent>[a-z_]+)_p(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$")


@dataclass(frozen=True)
class Dropped:
    table: str
    pieces: tuple[str, ...]  # the partitions or chunks dropped


def cutoff_day(now_s: float, days: int) -> int:
    """Pure: the first day (days since the epoch, UTC) that is kept."""
    return int(now_s // SECONDS_PER_DAY) - days


def partitions_to_drop(parent: str, names: Iterable[str], keep_from_day: int) -> list[str]:
    """Pure: the day partitions of `parent` (named `<parent>_pYYYYMMDD`, as
    recorder_ensure_partition names them) that lie wholly before `keep_from_day`."""
    from datetime import date

    out = []
    for name in names:
        m = _DAY_PARTITION.match(name)
        if m is None or m.group("parent") != parent:
            continue  # not ours: a partition made by hand is never dropped
        day = date(int(m.group("y")), int(m.group("m")), int(m.group("d"))).toordinal()
        if day - date(1970, 1, 1).toordinal() < keep_from_day:
            out.append(name)
    return sorted(out)


async def apply_retention(
    conn: asyncpg.Connection, mode: DbMode, days: int, now_s: float
) -> list[Dropped]:
    """Drop what is older than `days` whole days; returns what went (empty when days == 0)."""
    if days <= 0:
        return []
    keep_from = cutoff_day(now_s, days)
    dropped: list[Dropped] = []
    for table in (kind.table for kind in all_kinds()):
        if mode.hypertables:
            # drop_chunks drops only chunks whose whole range ends before older_than.
            rows = await conn.fetch(
                "SELECT drop_chunks($1::regclass, older_than => to_timestamp($2::float8))",
                table,
                float(keep_from * SECONDS_PER_DAY),
            )
            pieces = tuple(str(r[0]) for r in rows)
        else:
            rows = await conn.fetch(
                """SELECT c.relname, i.inhdetachpending FROM pg_inherits i
                   JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = $1::regclass""",
                table,
            )
            pending = {r["relname"] for r in rows if r["inhdetachpending"]}
            pieces = tuple(partitions_to_drop(table, (r["relname"] for r in rows), keep_from))
            for name in pieces:
                # DETACH ... CONCURRENTLY locks the parent only SHARE UPDATE EXCLUSIVE (a plain
                # DROP or DETACH takes ACCESS EXCLUSIVE: the writer would queue behind every
                # analytics query); it cannot run in a transaction block, asyncpg's execute
                # outside one is autocommit. FINALIZE completes a detach that was interrupted.
                how = "FINALIZE" if name in pending else "CONCURRENTLY"
                await conn.execute(f'ALTER TABLE "{table}" DETACH PARTITION "{name}" {how}')
                await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        if pieces:
            dropped.append(Dropped(table, pieces))
            telemetry.emit(
                telemetry.RETENTION_DROPPED, table=table, mode=mode.value, pieces=list(pieces)
            )
    return dropped
