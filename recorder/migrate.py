"""Schema migrations: numbered SQL files in migrations/, applied once under an advisory lock.

Owns the choice of database mode: TimescaleDB when the extension is available, plain
PostgreSQL (same table and view names, rollups maintained by the recorder) otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger("recorder.migrate")

# Any constant works as long as every recorder uses the same one.
MIGRATION_LOCK_ID = 0x5245434F5244  # "RECORD"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescaledb|postgres))?\.sql$")


class DbMode(StrEnum):
    TIMESCALEDB = "timescaledb"
    POSTGRES = "postgres"


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
        version, name, variant = int(match.group(1)), match.group(2), match.group(3)
        if variant is not None and variant != mode.value:
            continue
        if version in chosen:
            raise ValueError(f"two migrations with version {version:04d} for mode {mode}")
        chosen[version] = Migration(version, name, sql)
    return [chosen[v] for v in sorted(chosen) if v not in applied]


def migration_files() -> dict[str, str]:
    folder = resources.files("recorder") / "migrations"
    return {f.name: f.read_text("utf-8") for f in folder.iterdir() if f.name.endswith(".sql")}


async def detect_mode(conn: asyncpg.Connection) -> DbMode:
    """TimescaleDB when the extension exists or can be created, else plain PostgreSQL."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return DbMode.TIMESCALEDB
    available = await conn.fetchval(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    if available:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            return DbMode.TIMESCALEDB
        except asyncpg.PostgresError as exc:
            log.warning("timescaledb_unusable", error=str(exc), fallback="postgres")
    return DbMode.POSTGRES


async def migrate(conn: asyncpg.Connection) -> DbMode:
    """Apply pending migrations; safe when several recorders start at once."""
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
        mode = DbMode(modes.pop()) if modes else await detect_mode(conn)
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
            log.info("migration_applied", version=m.version, name=m.name, mode=mode.value)
        return mode
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def current_mode(conn: asyncpg.Connection) -> DbMode | None:
    try:
        value: Any = await conn.fetchval("SELECT mode FROM recorder_schema_migrations LIMIT 1")
    except asyncpg.UndefinedTableError:
        return None
    return DbMode(value) if value else None
