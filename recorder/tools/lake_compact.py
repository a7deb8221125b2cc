"""`datarecorder lake compact --hour H`: one closed hour's small data files of the Iceberg tables
replaced by one sorted file per table, atomically.

Owns the compaction of an hour partition: read the hour's rows from a snapshot, write them as
new files, and commit "delete the hour's files, add the new ones" against that snapshot, with
the snapshot's progress carried into the new one. A recorder committing meanwhile makes the
commit conflict (nothing applied): the hour is read again and rewritten, so no row committed in
between is lost and none is doubled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyiceberg.exceptions import CommitFailedException

from recorder.core.errors import ConfigError
from recorder.core.kinds import TopicKind
from recorder.runtime.settings import Settings
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig

HOUR_FORM = "expected an hour in UTC, e.g. 2026-11-26T09 (or 2026-11-26T09:00:00Z)"
MAX_CONFLICTS = 20


@dataclass(frozen=True, slots=True)
class Compacted:
    table: str
    files_before: int
    files_after: int
    rows: int
    conflicts: int


def parse_hour(text: str, now: datetime) -> datetime:
    """The start of the UTC hour `text` names, which must have ended before `now`."""
    raw = text.strip().upper().removesuffix("Z")
    try:
        when = datetime.fromisoformat(raw if ":" in raw else f"{raw}:00")
    except ValueError:
        raise ConfigError(f"--hour {text!r}: {HOUR_FORM}") from None
    # No zone: UTC, as the partitions are; a zone: that instant, in UTC.
    start = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if start.minute or start.second or start.microsecond:
        raise ConfigError(f"--hour {text!r}: not the start of an hour; {HOUR_FORM}")
    if start + timedelta(hours=1) > now:
        raise ConfigError(
            f"--hour {text!r}: the hour has not ended yet (now {now:%Y-%m-%dT%H:%M}Z)"
        )
    return start


def hour_filter(start: datetime) -> str:
    """The rows of the hour (an hour partition holds exactly these)."""
    end = start + timedelta(hours=1)
    return f"timestamp >= '{start.isoformat()}' and timestamp < '{end.isoformat()}'"


def compact_table(tables: Tables, kind: TopicKind, start: datetime) -> Compacted:
    where = hour_filter(start)
    name = tables.name(kind)
    for conflicts in range(MAX_CONFLICTS):
        table = tables.load(kind)
        progress = tables.progress(table)
        scan = table.scan(row_filter=where)
        before = len(list(scan.plan_files()))
        if before <= 1:
            return Compacted(name, before, before, 0, conflicts)
        rows = scan.to_arrow().sort_by([("timestamp_ns", "ascending")])
        txn = table.transaction()
        # The newest snapshot keeps carrying the recorder's progress (it is read from the
        # newest snapshot that has it; this one must not hide an older one's).
        txn.overwrite(rows, overwrite_filter=where, snapshot_properties=progress.summary())
        try:
            tables.commit_staged(table, txn)
        except CommitFailedException:
            continue  # a recorder committed meanwhile: read the hour again
        after = len(list(tables.load(kind).scan(row_filter=where).plan_files()))
        return Compacted(name, before, after, rows.num_rows, conflicts)
    raise RuntimeError(f"{name}: {MAX_CONFLICTS} commit conflicts in a row; try again")


def compact_sync(settings: Settings, hour: str, now: datetime) -> list[Compacted]:
    if settings.LAKE_FORMAT != "iceberg":
        raise ConfigError("lake compact works on the Iceberg tables: set LAKE_FORMAT=iceberg")
    start = parse_hour(hour, now)
    tables = Tables(IcebergConfig.of(settings))
    try:
        return [compact_table(tables, kind, start) for kind in TopicKind]
    finally:
        tables.close()


async def compact(settings: Settings, hour: str) -> str:
    """Compact both tables' hour `hour`; the report, one line per table."""
    done = await asyncio.to_thread(compact_sync, settings, hour, datetime.now(UTC))
    return "\n".join(
        f"{c.table}: {c.files_before} -> {c.files_after} files, {c.rows} rows rewritten"
        + (f" ({c.conflicts} commit conflicts retried)" if c.conflicts else "")
        for c in done
    )
