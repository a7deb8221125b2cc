"""Schema migrations: numbered SQL files in migrations/, applied once under an advisory lock.

Owns the choice of database mode (DESIGN.md, Stores), made once per database from what the
server offers: `timescaledb` (license `timescale`: continuous aggregates), `timescaledb-apache`
(license `apache`: hypertables, rollups and retention by the recorder), `postgres` otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import asyncpg

from recorder.runtime import telemetry

# Any constant works as long as every recorder uses the same one.
MIGRATION_LOCK_ID = 0x5245434F5244  # "RECORD"
# NNNN_name[.variant[+variant...]].sql: a file without variants applies in every mode.
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.([a-z]+(?:\+[a-z]+)*))?\.sql$")


class DbMode(StrEnum):
    TIMESCALEDB = "timescaledb"
    TIMESCALEDB_APACHE = "timescaledb-apache"
    POSTGRES = "postgres"

    @property
    def variant(self) -> str:
        """The token that names this mode in migration file names."""
        return _VARIANTS[self]

    @property
    def hypertables(self) -> bool:
        return self is not DbMode.POSTGRES

    @property
    def recorder_rollups(self) -> bool:
        """Rollups kept by the recorder in the rows' transaction (no continuous aggregates)."""
        return self is not DbMode.TIMESCALEDB


_VARIANTS = {
    DbMode.TIMESCALEDB: "timescaledb",
    DbMode.TIMESCALEDB_APACHE: "apache",
    DbMode.POSTGRES: "postgres",
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def plan_migrations(files: dict[str, str], mode: DbMode, applied: set[int]) -> list[Migration]:
    """Pure: which migrations to apply, in order, for `mode` given the applied versions."""
    chosen: dict[int, Migration] = {}
    for filename, sql in files.items():
        match = _FILE.match(filename)
        if match is None:
            continue
        version, name, variants = int(match.group(1)), match.group(2), match.group(3)
        if variants is not None and mode.variant not in variants.split("+"):
            continue
        if version in chosen:
            raise ValueError(f"two migrations with version {version:04d} for mode {mode}")
        chosen[version] = Migration(version, name, sql)
    return [chosen[v] for v in sorted(chosen) if v not in applied]


def migration_files() -> dict[str, str]:
    folder = resources.files("recorder") / "migrations"
    return {f.name: f.read_text("utf-8") for f in folder.iterdir() if f.name.endswith(".sql")}


def mode_for_license(license_name: str | None) -> tuple[DbMode, str]:
    """Pure: the mode for the value of `SHOW timescaledb.license` (None: no extension)."""
    if license_name is None:
        return DbMode.POSTGRES, "the timescaledb extension is not available on this server"
    if license_name == "timescale":
        return DbMode.TIMESCALEDB, "timescaledb.license = timescale (continuous aggregates)"
    if license_name == "apache":
        return (
            DbMode.TIMESCALEDB_APACHE,
            "timescaledb.license = apache (hypertables; no continuous aggregates or policies)",
        )
    raise ValueError(
        f"timescaledb.license = {license_name!r}: unknown license, expected 'timescale' or 'apache'"
    )


async def detect_mode(conn: asyncpg.Connection) -> tuple[DbMode, str]:
    """The mode this server offers and why: creates the extension when it is available."""
    present = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if not present:
        available = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if not available:
            return mode_for_license(None)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except asyncpg.PostgresError as exc:
            # Typically: not in shared_preload_libraries, or no right to create extensions.
            telemetry.emit(telemetry.TIMESCALEDB_UNUSABLE, error=str(exc), fallback="postgres")
            return DbMode.POSTGRES, f"the timescaledb extension is installed but unusable: {exc}"
    license_name = await conn.fetchval("SHOW timescaledb.license")
    return mode_for_license(str(license_name))


@dataclass(frozen=True)
class MigrationResult:
    mode: DbMode
    reason: str
    applied: tuple[Migration, ...]


async def migrate(conn: asyncpg.Connection) -> DbMode:
    """Apply pending migrations; safe when several recorders start at once."""
    return (await migrate_explained(conn)).mode


async def migrate_explained(conn: asyncpg.Connection) -> MigrationResult:
    """`migrate`, also saying why the mode is what it is and what was applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS recorder_schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL, mode text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, mode FROM recorder_schema_migrations")
        applied = {r["version"] for r in rows}
        modes = {r["mode"] for r in rows}
        if modes:
            mode = DbMode(modes.pop())
            reason = "the mode this database was first migrated in (recorder_schema_migrations)"
        else:
            mode, reason = await detect_mode(conn)
        pending = plan_migrations(migration_files(), mode, applied)
        for m in pending:
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO recorder_schema_migrations (version, name, mode) VALUES ($1,$2,$3)",
                    m.version,
                    m.name,
                    mode.value,
                )
            telemetry.emit(
                telemetry.MIGRATION_APPLIED, version=m.version, name=m.name, mode=mode.value
            )
        return MigrationResult(mode, reason, tuple(pending))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def current_mode(conn: asyncpg.Connection) -> DbMode | None:
    try:
        value: Any = await conn.fetchval("SELECT mode FROM recorder_schema_migrations LIMIT 1")
    except asyncpg.UndefinedTableError:
        return None
    return DbMode(value) if value else None
