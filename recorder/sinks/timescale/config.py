"""The database sink's own settings, read from `Settings` once.

Owns `TimescaleConfig`: what the sink, its writes and its upkeep need (the connection, the
batch size and age, the writers, migrations, compression and retention), and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recorder.runtime.settings import Settings

SINK = "timescaledb"


@dataclass(frozen=True, slots=True)
class TimescaleConfig:
    dsn: Mapping[str, Any]  # asyncpg connection keywords (host, port, user, password, …)
    writers: int  # DB_WRITE_WORKERS: transactions at once, one lane each
    batch_rows: int  # BATCH_SIZE
    batch_age_sec: float  # BATCH_TIMEOUT_MS
    retry_max_backoff_sec: float
    migrate_on_start: bool
    compress_after_days: int
    retention_days: int
    retention_interval_sec: float

    @classmethod
    def of(cls, settings: Settings) -> TimescaleConfig:
        return cls(
            dsn=settings.db_dsn_kwargs(),
            writers=settings.DB_WRITE_WORKERS,
            batch_rows=settings.BATCH_SIZE,
            batch_age_sec=settings.BATCH_TIMEOUT_MS / 1000,
            retry_max_backoff_sec=settings.RETRY_MAX_BACKOFF_SEC,
            migrate_on_start=settings.MIGRATE_ON_START,
            compress_after_days=settings.DB_COMPRESS_AFTER_DAYS,
            retention_days=settings.DB_RETENTION_DAYS,
            retention_interval_sec=settings.DB_RETENTION_INTERVAL_SEC,
        )
