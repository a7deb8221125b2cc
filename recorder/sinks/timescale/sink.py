"""The hot path: rows into TimescaleDB/PostgreSQL by binary COPY, exactly once.

Owns the wiring of the database sink: the pool, start-up (migrations, the mode, compression),
the upkeep timers, and the progress requests of the Sink protocol, each retried; the driver
(recorder.sinks.driver) schedules the writes, one transaction each (`service`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TypeVar

import asyncpg

from recorder.core.backoff import Backoff
from recorder.core.offsets import TP
from recorder.kafka.dlq import DeadLetters
from recorder.runtime import telemetry
from recorder.runtime.retry import retry_forever
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback
from recorder.sinks.driver import BufferedSink, Schedule
from recorder.sinks.timescale import progress as progress_rows
from recorder.sinks.timescale.config import SINK as SINK
from recorder.sinks.timescale.config import TimescaleConfig
from recorder.sinks.timescale.migrate import DbMode, current_mode, migrate
from recorder.sinks.timescale.service import TimescaleStore
from recorder.sinks.timescale.upkeep import Upkeep

T = TypeVar("T")

# A member frozen inside a transaction (SIGSTOP, a GC pause, a partition from the database)
# holds its row locks on the hot bars: the server ends its session, so the other writers are
# not stalled behind it for good.
IDLE_IN_TRANSACTION_MS = "60000"
# A write that failed for a reason retrying does not fix: its writer waits this long, doubling
# per failure in a row, up to RETRY_MAX_BACKOFF_SEC.
FAILED_WRITE_BACKOFF_SEC = 1.0


class TimescaleSink(BufferedSink):
    """Hot-path sink; `DB_WRITE_WORKERS` writers share one asyncpg pool."""

    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, TopicKind],
        dead_letters: DeadLetters,
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
    ) -> None:
        config = TimescaleConfig.of(settings)
        self._config = config
        self._upkeep = Upkeep(config, topics)
        self._db = TimescaleStore(config, topics, dead_letters, self._upkeep, self._on_retry)
        schedule = Schedule(
            config.batch_rows,
            config.batch_age_sec,
            Backoff(FAILED_WRITE_BACKOFF_SEC, config.retry_max_backoff_sec),
        )
        super().__init__(SINK, self._db, schedule, on_progress, on_resync)
        self._timers: list[asyncio.Task[None]] = []
        self.stage = "connecting"  # where start-up is (the shutdown log names it)

    @property
    def mode(self) -> DbMode:
        return self._upkeep.mode

    async def start(self) -> None:
        async def connect() -> asyncpg.Pool:
            pool = await asyncpg.create_pool(
                min_size=1,
                max_size=self._config.writers + 2,
                command_timeout=60,
                server_settings={"idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_MS},
                **self._config.dsn,
            )
            assert pool is not None
            return pool

        pool = await self._retried("connect", connect)
        self._db.pool = pool
        self.stage = "migrating" if self._config.migrate_on_start else "reading the schema"
        async with pool.acquire() as conn:
            if self._config.migrate_on_start:
                self._upkeep.mode = await migrate(conn)
            else:
                mode = await current_mode(conn)
                if mode is None:
                    raise RuntimeError(
                        "the database has no schema: run `datarecorder migrate` or set MIGRATE_ON_START=true"
                    )
                self._upkeep.mode = mode
            await self._upkeep.apply_compression(conn)
        self._upkeep.check_retention()
        self.stage = "started"
        self._start_flushing()
        if self._config.retention_days > 0:
            retention = self._upkeep.run_retention(pool)
            self._timers.append(asyncio.create_task(retention, name="db-retention"))
        if self.mode is DbMode.POSTGRES:
            days = self._upkeep.maintain_partitions(pool)
            self._timers.append(asyncio.create_task(days, name="db-partitions"))
        if self.mode is DbMode.TIMESCALEDB:
            late = self._upkeep.refresh_late(pool)
            self._timers.append(asyncio.create_task(late, name="db-late-bars"))
        telemetry.emit(
            telemetry.SINK_STARTED, sink=SINK, mode=self.mode.value, writers=self._config.writers
        )

    async def close(self) -> None:
        for task in self._timers:
            task.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        await self._stop_flushing()
        if self._db.pool is not None:
            await self._db.pool.close()

    async def ensure_days_ahead(self, days: int = 2) -> None:
        """Create today's and the next days' partitions ahead of the data (plain mode)."""
        if self._db.pool is not None:
            await self._upkeep.ensure_days_ahead(self._db.pool, days)

    # --- progress (DESIGN rule 1 is in the write; these read and start it) ---------------
    async def _retried(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        return await retry_forever(what, attempt, self._config.retry_max_backoff_sec, self._failed)

    def _pool(self) -> asyncpg.Pool:
        assert self._db.pool is not None
        return self._db.pool

    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        pool = self._pool()
        return await self._retried("load_progress", lambda: progress_rows.load(pool, tps))

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        """Record where partitions without progress start (the reset policy's position), so a
        restart before the first flush resumes there; a row another writer stored first wins."""
        pool = self._pool()
        return await self._retried("store_start", lambda: progress_rows.store_start(pool, starts))

    async def load_identity(self, tps: Collection[TP]) -> dict[TP, str | None]:
        pool = self._pool()
        return await self._retried("load_identity", lambda: progress_rows.load_identity(pool, tps))

    async def store_identity(self, ids: Mapping[TP, str]) -> None:
        pool = self._pool()
        await self._retried("store_identity", lambda: progress_rows.store_identity(pool, ids))

    async def known_partitions(self, topics: Collection[str]) -> dict[str, set[int]]:
        pool = self._pool()
        return await self._retried(
            "known_partitions", lambda: progress_rows.known_partitions(pool, topics)
        )
