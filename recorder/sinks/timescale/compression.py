"""Native compression of old chunks in `timescaledb` mode (DB_COMPRESS_AFTER_DAYS).

Owns the compression settings of the kinds' hypertables (segmented by symbol, ordered by time, so a
symbol's range query reads few compressed batches) and their compression policy, applied at
start from the settings: the Apache edition and plain PostgreSQL have no compression.
"""

from __future__ import annotations

import asyncpg

from recorder.core.kinds import all_kinds
from recorder.runtime import telemetry
from recorder.sinks.timescale.migrate import MIGRATION_LOCK_ID

# The settings each table wants, as timescaledb_information.compression_settings shows them:
# column -> (segmentby_column_index, orderby_asc).
WANTED: dict[str, tuple[int | None, bool | None]] = {"symbol": (1, None), "time": (None, False)}


async def apply_compression(conn: asyncpg.Connection, after_days: int) -> None:
    """Compress chunks older than `after_days`; 0 leaves the tables' compression as it is (a
    policy set by hand stays).

    Only what differs is changed, under the migration lock (pods start together): an ALTER of
    the settings is refused by TimescaleDB before 2.14 once chunks are compressed, so applying
    it at every start would stop every pod from starting, and replacing an equal policy would
    give it a new job each time."""
    if after_days <= 0:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        for table in (kind.table for kind in all_kinds()):
            if await _settings(conn, table) != WANTED:
                await conn.execute(
                    f"""ALTER TABLE {table} SET (timescaledb.compress,
                            timescaledb.compress_segmentby = 'symbol',
                            timescaledb.compress_orderby = 'time DESC')"""
                )
            if await _policy(conn, table) == f"{after_days} days":
                continue
            # Replaced, not kept: if_not_exists would silently keep a policy's old interval.
            await conn.execute(
                "SELECT remove_compression_policy($1::regclass, if_exists => TRUE)", table
            )
            await conn.execute(
                "SELECT add_compression_policy($1::regclass,"
                " compress_after => make_interval(days => $2))",
                table,
                after_days,
            )
            telemetry.emit(telemetry.COMPRESSION_POLICY, table=table, after_days=after_days)


async def _settings(conn: asyncpg.Connection, table: str) -> dict[str, tuple[object, object]]:
    rows = await conn.fetch(
        """SELECT attname, segmentby_column_index, orderby_asc
           FROM timescaledb_information.compression_settings WHERE hypertable_name = $1""",
        table,
    )
    return {r["attname"]: (r["segmentby_column_index"], r["orderby_asc"]) for r in rows}


async def _policy(conn: asyncpg.Connection, table: str) -> str | None:
    """The table's compression policy's `compress_after` (e.g. "2 days"), None without one."""
    value: str | None = await conn.fetchval(
        """SELECT config->>'compress_after' FROM timescaledb_information.jobs
           WHERE proc_name = 'policy_compression' AND hypertable_name = $1""",
        table,
    )
    return value
