"""Native compression of old chunks in `timescaledb` mode (DB_COMPRESS_AFTER_DAYS).

Owns the compression settings of the two hypertables (segmented by symbol, ordered by time, so a
symbol's range query reads few compressed batches) and their compression policy, applied at
start from the settings: the Apache edition and plain PostgreSQL have no compression.
"""

from __future__ import annotations

import asyncpg

from recorder import telemetry

TABLES = ("tick_data", "orderbook")


async def apply_compression(conn: asyncpg.Connection, after_days: int) -> None:
    """Compress chunks older than `after_days`; 0 leaves the tables' compression as it is (a
    policy set by hand stays)."""
    if after_days <= 0:
        return
    for table in TABLES:
        await conn.execute(
            f"""ALTER TABLE {table} SET (timescaledb.compress,
                    timescaledb.compress_segmentby = 'symbol',
                    timescaledb.compress_orderby = 'time DESC')"""
        )
        # Replaced, not kept: if_not_exists would silently keep a policy's old interval.
        await conn.execute(
            "SELECT remove_compression_policy($1::regclass, if_exists => TRUE)", table
        )
        await conn.execute(
            "SELECT add_compression_policy($1::regclass, compress_after => make_interval(days => $2))",
            table,
            after_days,
        )
        telemetry.emit(telemetry.COMPRESSION_POLICY, table=table, after_days=after_days)
