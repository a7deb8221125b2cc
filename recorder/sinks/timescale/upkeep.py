"""The database's upkeep beside the writes: day partitions, retention, compression, late bars.

Owns the days known to have a partition (plain PostgreSQL mode: created ahead of the data on a
timer, and by a write that needs a day first), the retention timer (DB_RETENTION_DAYS, run by
the recorder where the server has no policies), applying the compression setting at start and,
in TimescaleDB mode, refreshing the continuous aggregates' buckets that late ticks touched
outside their refresh policies' windows (`recorder.core.rollups.late_windows`), so every mode
holds the same bars for the same ticks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import date, timedelta

import asyncpg
import numpy as np

from recorder.core.batching import Batch
from recorder.core.columns import times_of
from recorder.core.kinds import FALLBACK, TopicKind, all_kinds, kind_of
from recorder.core.offsets import TP
from recorder.core.rollups import (
    MIN_RETENTION_DAYS_WITH_POLICIES,
    late_windows,
    merge_windows,
)
from recorder.runtime import telemetry
from recorder.sinks.timescale.compression import apply_compression
from recorder.sinks.timescale.config import SINK, TimescaleConfig
from recorder.sinks.timescale.migrate import DbMode
from recorder.sinks.timescale.retention import apply_retention

NS_PER_DAY = 86_400 * 1_000_000_000
# Plain mode creates daily partitions ahead of the data on this period (and at start).
PARTITION_MAINTENANCE_SEC = 3600.0


def table_of(kind: TopicKind | None) -> str:
    """The database table of a topic's kind (a topic we were not told of: `FALLBACK`'s)."""
    return kind_of(FALLBACK if kind is None else kind).table


async def refresh_buckets(conn: asyncpg.Connection, view: str, start: int, end: int) -> None:
    """Refresh the buckets [start, end) (ns) of one continuous aggregate."""
    # Buckets are whole minutes: seconds are exact.
    await conn.execute(
        "CALL refresh_continuous_aggregate($1::regclass, "
        "to_timestamp($2::bigint), to_timestamp($3::bigint))",
        view,
        start // 1_000_000_000,
        end // 1_000_000_000,
    )
    telemetry.emit(telemetry.LATE_BARS_REFRESHED, sink=SINK, view=view, start=start, end=end)


class Upkeep:
    """Day partitions, retention and compression of one database."""

    def __init__(self, config: TimescaleConfig, topics: Mapping[str, TopicKind]) -> None:
        self._config = config
        self._topics = dict(topics)
        self.mode: DbMode = DbMode.POSTGRES
        self.known_days: set[tuple[str, int]] = set()
        self._late: dict[str, tuple[int, int]] = {}  # buckets to refresh, per aggregate
        self._late_wake = asyncio.Event()

    def check_retention(self) -> None:
        """TimescaleDB mode: refuse a retention shorter than the longest refresh policy window
        (a policy would rebuild bars of days whose raw rows retention dropped)."""
        days = self._config.retention_days
        if self.mode is DbMode.TIMESCALEDB and 0 < days < MIN_RETENTION_DAYS_WITH_POLICIES:
            raise ValueError(
                f"DB_RETENTION_DAYS={days}: in TimescaleDB mode it must be 0 (keep everything) "
                f"or at least {MIN_RETENTION_DAYS_WITH_POLICIES} days, longer than the 7-day "
                "refresh window of tick_1hour, or refreshes would rebuild bars of days whose "
                "ticks retention already dropped"
            )

    def late_rows(self, batches: list[Batch], rollups: Mapping[str, int]) -> None:
        """TimescaleDB mode, after a commit: queue the buckets these rows (of a kind with
        `rollups`) touched outside the policies' windows for a refresh in the background
        (batched per aggregate)."""
        if self.mode is not DbMode.TIMESCALEDB:
            return
        times = [times_of(chunk) for batch in batches for chunk in batch.chunks]
        if not times:
            return
        windows = late_windows(
            np.concatenate(times), time.time_ns(), self._config.retention_days, rollups
        )
        if windows:
            self._late = merge_windows(self._late, windows)
            self._late_wake.set()

    def take_late(self) -> dict[str, tuple[int, int]]:
        """The queued bucket ranges, per aggregate, now taken off the queue."""
        pending, self._late = self._late, {}
        return pending

    async def refresh_late(self, pool: asyncpg.Pool) -> None:
        """Refresh the queued buckets, one aggregate at a time (a refresh must run outside a
        transaction). A failed refresh is logged and its range queued again."""
        while True:
            await self._late_wake.wait()
            self._late_wake.clear()
            for view, (start, end) in sorted(self.take_late().items()):
                try:
                    async with pool.acquire() as conn:
                        await refresh_buckets(conn, view, start, end)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    telemetry.emit(
                        telemetry.LATE_BARS_REFRESH_FAILED,
                        sink=SINK,
                        view=view,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    self._late = merge_windows(self._late, {view: (start, end)})
                    await asyncio.sleep(self._config.retry_max_backoff_sec)
                    self._late_wake.set()

    async def ensure_partitions(self, pool: asyncpg.Pool, batches: Mapping[TP, Batch]) -> None:
        """Plain mode: create the daily partitions a write needs, outside its transaction."""
        needed: set[tuple[str, int]] = set()
        for tp, batch in batches.items():
            table = table_of(self._topics.get(tp.topic))
            if not batch.count:
                continue
            days_of = [times_of(chunk) // NS_PER_DAY for chunk in batch.chunks]
            first = min(int(d.min()) for d in days_of if len(d))
            last = max(int(d.max()) for d in days_of if len(d))
            # Almost every batch lies within one day: skip the per-row pass then.
            days = {first} if first == last else {int(d) for x in days_of for d in np.unique(x)}
            needed.update((table, day) for day in days if (table, day) not in self.known_days)
        if not needed:
            return
        async with pool.acquire() as conn:
            for table, day in sorted(needed):
                await self._ensure(conn, table, day)

    async def _ensure(self, conn: asyncpg.Connection, table: str, day: int) -> None:
        await conn.execute(
            "SELECT recorder_ensure_partition($1, $2)",
            table,
            date(1970, 1, 1) + timedelta(days=day),
        )
        self.known_days.add((table, day))

    async def ensure_days_ahead(self, pool: asyncpg.Pool, days: int = 2) -> None:
        """Create today's and the next days' partitions ahead of the data (plain mode)."""
        if self.mode is not DbMode.POSTGRES:
            return
        today = int(time.time() // 86_400)
        async with pool.acquire() as conn:
            for table in (kind.table for kind in all_kinds()):
                for day in range(today, today + days + 1):
                    if (table, day) not in self.known_days:
                        await self._ensure(conn, table, day)

    async def maintain_partitions(self, pool: asyncpg.Pool) -> None:
        """Plain mode: the coming days' partitions exist before their first row (a failed run
        is logged and tried again next period; the writers create a missing day themselves)."""
        while True:
            try:
                await self.ensure_days_ahead(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                telemetry.emit(telemetry.PARTITION_MAINTENANCE_FAILED, sink=SINK, error=str(exc))
            await asyncio.sleep(PARTITION_MAINTENANCE_SEC)

    async def apply_compression(self, conn: asyncpg.Connection) -> None:
        days = self._config.compress_after_days
        if self.mode is DbMode.TIMESCALEDB:
            await apply_compression(conn, days)
        elif days > 0:
            telemetry.emit(
                telemetry.COMPRESSION_UNAVAILABLE,
                mode=self.mode.value,
                setting="DB_COMPRESS_AFTER_DAYS",
            )

    async def run_retention(self, pool: asyncpg.Pool) -> None:
        """DB_RETENTION_DAYS by the recorder (no policies in the Apache edition or plain
        PostgreSQL): at start, then every DB_RETENTION_INTERVAL_SEC. A failed run is logged
        and tried again next time; it never stops the writers."""
        while True:
            try:
                async with pool.acquire() as conn:
                    dropped = await apply_retention(
                        conn, self.mode, self._config.retention_days, time.time()
                    )
                for d in dropped:
                    # The writer recreates a dropped day if a (late) row for it still arrives.
                    self.known_days = {k for k in self.known_days if k[0] != d.table}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                telemetry.emit(
                    telemetry.RETENTION_FAILED, sink=SINK, error=f"{type(exc).__name__}: {exc}"
                )
            await asyncio.sleep(self._config.retention_interval_sec)
