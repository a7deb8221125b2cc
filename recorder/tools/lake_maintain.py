"""`datarecorder lake expire-snapshots` and `datarecorder lake remove-orphans`: the Iceberg
tables' upkeep, with defaults that never touch what a recorder relies on.

Owns which snapshots may be expired (older than a threshold, beyond the newest
`--retain-last` of the current branch, never a branch's or tag's head, never the snapshot the
recorder's progress is read from nor one between it and the current snapshot) and which files under a table's location are orphans (no
metadata file in the log, no snapshot's manifest list, manifest or manifest entry names them,
and older than a threshold that keeps a recorder's uploads that are not committed yet).

Expiring removes snapshots from the table's metadata in one commit (pyiceberg's
`table.maintenance.expire_snapshots()`); it deletes no file. The files only those snapshots
referenced are orphans from then on, and `remove-orphans` deletes them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from pyarrow.fs import FileSelector, FileType
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of

from recorder.core.errors import ConfigError
from recorder.core.kinds import TopicKind
from recorder.runtime.settings import Settings
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.iceberg.progress import from_summary

MAX_CONFLICTS = 20
AGE_FORM = "expected a duration such as 7d, 36h, 90m, 30s or 0"
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# One JSON line per table and command on stderr (`recorder.runtime.logs`), beside the report.
log = structlog.get_logger()
# Names shown per table in a dry run's summary before the rest are counted.
LISTED = 50


def parse_age(text: str, option: str) -> timedelta:
    """`7d`, `36h`, `90m`, `30s`, `2w` or a number of seconds (`0`)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if found is None:
        raise ConfigError(f"{option} {text!r}: {AGE_FORM}")
    return timedelta(seconds=float(found.group(1)) * UNITS[found.group(2)])


# --- expire-snapshots -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Snap:
    """What the plan needs of a snapshot."""

    id: int
    timestamp_ms: int


def expire_plan(
    snapshots: Sequence[Snap],
    lineage: Sequence[int],
    protected: Iterable[int],
    cutoff_ms: int,
    retain_last: int,
) -> set[int]:
    """The snapshots to expire (pure): older than `cutoff_ms`, not among the newest
    `retain_last` of `lineage` (the current branch, newest first), not `protected`."""
    keep = set(protected) | set(lineage[: max(1, retain_last)])
    return {s.id for s in snapshots if s.timestamp_ms < cutoff_ms and s.id not in keep}


def protected_ids(lineage: Sequence[int], heads: Iterable[int], carrier: int | None) -> set[int]:
    """Snapshots never expired (pure): the heads of branches and tags, and the progress's
    snapshot `carrier` with every snapshot between it and the current one (`lineage`, newest
    first): the progress is found by walking parents from the current snapshot to it."""
    out = set(heads)
    if carrier is not None and carrier in lineage:
        out |= set(lineage[: lineage.index(carrier) + 1])
    return out


def progress_snapshot(table: Table) -> int | None:
    """The snapshot the recorder's progress is read from: the newest of the current branch
    that carries `datarecorder.offsets` (recorder.sinks.iceberg.catalog.Tables.progress)."""
    where = f"table {'.'.join(table.name())}"
    for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
        summary = snapshot.summary
        if summary is not None and from_summary(summary.additional_properties, where) is not None:
            return snapshot.snapshot_id
    return None


@dataclass(frozen=True, slots=True)
class Expired:
    table: str
    expired: list[int]
    kept: int
    current: int | None
    conflicts: int = 0


def expire_table(
    tables: Tables, kind: TopicKind, older_than: timedelta, retain_last: int, now_ms: int
) -> Expired:
    name = tables.name(kind)
    cutoff_ms = now_ms - int(older_than.total_seconds() * 1000)
    for conflicts in range(MAX_CONFLICTS):
        table = tables.load(kind)
        current = table.current_snapshot()
        lineage = [s.snapshot_id for s in ancestors_of(current, table.metadata)]
        heads = {ref.snapshot_id for ref in table.metadata.refs.values()}
        protected = protected_ids(lineage, heads, progress_snapshot(table))
        snaps = [Snap(s.snapshot_id, s.timestamp_ms) for s in table.snapshots()]
        doomed = expire_plan(snaps, lineage, protected, cutoff_ms, retain_last)
        current_id = current.snapshot_id if current is not None else None
        if not doomed:
            return Expired(name, [], len(snaps), current_id, conflicts)
        try:
            # One commit; the catalog applies it to the table as it is then (a recorder's
            # newer snapshot is kept: it is none of these).
            table.maintenance.expire_snapshots().by_ids(sorted(doomed)).commit()
        except CommitFailedException:
            continue
        return Expired(name, sorted(doomed), len(snaps) - len(doomed), current_id, conflicts)
    raise RuntimeError(f"{name}: {MAX_CONFLICTS} commit conflicts in a row; try again")


def expire_sync(
    settings: Settings, older_than: timedelta, retain_last: int, now_ms: int
) -> list[Expired]:
    tables = _tables(settings, "expire-snapshots")
    try:
        done = []
        for kind in TopicKind:
            expired = expire_table(tables, kind, older_than, retain_last, now_ms)
            log.info(
                "lake_snapshots_expired",
                table=expired.table,
                expired=len(expired.expired),
                kept=expired.kept,
                current=expired.current,
                older_than_s=older_than.total_seconds(),
                retain_last=retain_last,
            )
            done.append(expired)
        return done
    finally:
        tables.close()


async def expire_snapshots(settings: Settings, older_than: str, retain_last: int) -> str:
    """Expire both tables' old snapshots; the report, one line per table."""
    age = parse_age(older_than, "--older-than")
    if retain_last < 1:
        raise ConfigError(f"--retain-last {retain_last}: at least 1 (the current snapshot)")
    now_ms = int(time.time() * 1000)
    done = await asyncio.to_thread(expire_sync, settings, age, retain_last, now_ms)
    return "\n".join(
        f"{e.table}: {len(e.expired)} snapshots expired, {e.kept} kept "
        f"(current {e.current})"
        + (f" ({e.conflicts} commit conflicts retried)" if e.conflicts else "")
        for e in done
    )


# --- remove-orphans -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Listed:
    """A file under the table's location: its path as the file system names it, its age."""

    path: str
    mtime_s: float
    size: int


def orphans(listed: Iterable[Listed], referenced: set[str], cutoff_s: float) -> list[Listed]:
    """The listed files that nothing references and that were last written before
    `cutoff_s` (pure)."""
    return sorted(
        (f for f in listed if f.path not in referenced and f.mtime_s < cutoff_s),
        key=lambda f: f.path,
    )


def file_io(table: Table) -> PyArrowFileIO:
    """The table's FileIO: the recorder's tables use pyarrow's (config.file_io)."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise ConfigError(f"the table's FileIO is {type(io).__name__}, not PyArrowFileIO")
    return io


def fs_path(io: PyArrowFileIO, location: str) -> tuple[str, str, str]:
    """(scheme, netloc, path as the file system lists it) of a location."""
    return io.parse_location(location, io.properties)


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata reaches, as file-system paths: the current metadata
    file and those in its log, statistics files, and per snapshot its manifest list, its
    manifests and every entry of them (deleted entries too)."""
    io = file_io(table)
    meta = table.metadata
    locations = {table.metadata_location, *(e.metadata_file for e in meta.metadata_log)}
    locations |= {s.statistics_path for s in meta.statistics}
    locations |= {s.statistics_path for s in meta.partition_statistics}
    manifests: dict[str, ManifestFile] = {}
    for snapshot in meta.snapshots:
        locations.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            manifests.setdefault(manifest.manifest_path, manifest)
    for path, manifest in manifests.items():
        locations.add(path)
        for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
            locations.add(entry.data_file.file_path)
    return {fs_path(io, loc)[2] for loc in locations}


def list_files(table: Table) -> list[Listed]:
    """Every file under the table's location."""
    io = file_io(table)
    scheme, netloc, root = fs_path(io, table.metadata.location)
    fs = io.fs_by_scheme(scheme, netloc)
    selector = FileSelector(root.rstrip("/"), recursive=True, allow_not_found=True)
    return [
        Listed(info.path, info.mtime.timestamp() if info.mtime else 0.0, info.size or 0)
        for info in fs.get_file_info(selector)
        if info.type == FileType.File
    ]


@dataclass(frozen=True, slots=True)
class Orphans:
    table: str
    listed: int
    files: list[Listed]
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def remove_table(
    tables: Tables, kind: TopicKind, older_than: timedelta, dry_run: bool, now_s: float
) -> Orphans:
    name = tables.name(kind)
    # List first, then read the metadata: a file committed between the two is referenced by
    # what is read. A file uploaded and not committed yet is younger than the threshold.
    listed = list_files(tables.load(kind))
    table = tables.load(kind)
    found = orphans(listed, referenced_files(table), now_s - older_than.total_seconds())
    if dry_run:
        return Orphans(name, len(listed), found)
    io = file_io(table)
    scheme, netloc, _ = fs_path(io, table.metadata.location)
    fs = io.fs_by_scheme(scheme, netloc)
    deleted, failed = [], {}
    for f in found:
        try:
            fs.delete_file(f.path)
        except OSError as exc:
            failed[f.path] = f"{type(exc).__name__}: {exc}"
            continue
        deleted.append(f.path)
    return Orphans(name, len(listed), found, deleted, failed)


def remove_sync(
    settings: Settings, older_than: timedelta, dry_run: bool, now_s: float
) -> list[Orphans]:
    tables = _tables(settings, "remove-orphans")
    try:
        done = []
        for kind in TopicKind:
            out = remove_table(tables, kind, older_than, dry_run, now_s)
            log.info(
                "lake_orphans_removed",
                table=out.table,
                listed=out.listed,
                orphans=len(out.files),
                deleted=len(out.deleted),
                failed=len(out.failed),
                bytes=sum(f.size for f in out.files if f.path in set(out.deleted)),
                older_than_s=older_than.total_seconds(),
                dry_run=dry_run,
            )
            done.append(out)
        return done
    finally:
        tables.close()


def _report_orphans(out: Orphans, dry_run: bool) -> list[str]:
    size = sum(f.size for f in out.files)
    if dry_run:
        lines = [f"{out.table}: {len(out.files)} orphan files ({size} bytes) of {out.listed}"]
        lines += [f"  {f.path}" for f in out.files[:LISTED]]
        if len(out.files) > LISTED:
            lines.append(f"  ... and {len(out.files) - LISTED} more")
        return lines
    lines = [f"{out.table}: {len(out.deleted)} orphan files deleted ({size} bytes) of {out.listed}"]
    lines += [f"  failed: {path}: {why}" for path, why in out.failed.items()]
    return lines


async def remove_orphans(settings: Settings, older_than: str, dry_run: bool) -> tuple[str, bool]:
    """Delete (or with `dry_run` list) both tables' orphan files; the report, and whether
    every deletion worked."""
    age = parse_age(older_than, "--older-than")
    done = await asyncio.to_thread(remove_sync, settings, age, dry_run, time.time())
    lines = [line for out in done for line in _report_orphans(out, dry_run)]
    return "\n".join(lines), not any(out.failed for out in done)


def _tables(settings: Settings, command: str) -> Tables:
    if settings.LAKE_FORMAT != "iceberg":
        raise ConfigError(f"lake {command} works on the Iceberg tables: set LAKE_FORMAT=iceberg")
    return Tables(IcebergConfig.of(settings))
