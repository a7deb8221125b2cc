"""What every sink offers the pipeline.

Owns the Sink protocol (buffer, flush, progress, revoke) and the sinks' health probe; the retry
rule they share is recorder.retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol, TypeVar

import pyarrow as pa

from recorder import metrics
from recorder.core.offsets import TP

T = TypeVar("T")

ProgressCallback = Callable[[TP, int], None]
# Called when a sink dropped a partition's buffer and must be fed again from its progress.
ResyncCallback = Callable[[TP], None]


class Fenced(Exception):
    """Stored progress moved under us: another owner wrote this partition (we are a zombie)."""

    def __init__(self, tp: TP, stored: int | None) -> None:
        super().__init__(f"{tp.topic}[{tp.partition}] progress moved to {stored}")
        self.tp = tp
        self.stored = stored


class Sink(Protocol):
    name: str
    healthy: bool

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]: ...
    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        """Store `starts` as the progress of partitions that have none; return what is stored
        (another writer's start where it stored one first)."""
        ...

    def assign(self, progress: Mapping[TP, int | None]) -> None: ...
    def offer(self, tp: TP, columns: pa.Table, end: int) -> None:
        """Buffer one fetch of `tp`: its valid records as columns (recorder.core.columns, the
        same table for every sink) and `end`, the offset after its last record."""
        ...

    def buffered(self) -> int: ...
    def buffered_bytes(self) -> int:
        """Estimated decoded bytes held in buffers and in-flight batches."""
        ...

    def progress(self) -> dict[TP, int | None]: ...
    async def flush_all(self, tps: Collection[TP] | None = None) -> None: ...
    def revoke(self, tps: Collection[TP]) -> None: ...
    async def abandon(self, tps: Collection[TP]) -> None: ...
    async def check_health(self) -> bool: ...
    def failure(self) -> str | None:
        """Why one of the sink's long-running tasks died, if one did."""
        ...


PROBE_TIMEOUT_SEC = 3.0


class SinkHealth:
    """A sink's health flag, shown on /health and as `datarecorder_sink_healthy{sink}`."""

    name: str
    healthy: bool = False

    def _set_healthy(self, ok: bool) -> None:
        self.healthy = ok
        metrics.SINK_HEALTHY.labels(self.name).set(1 if ok else 0)

    def _failed(self, _exc: BaseException) -> None:
        self._set_healthy(False)

    async def _probe(self, check: Callable[[], Awaitable[object]]) -> bool:
        """Run the store's cheapest request; healthy when it answers within PROBE_TIMEOUT_SEC."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SEC):
                await check()
            self._set_healthy(True)
        except Exception:
            self._set_healthy(False)
        return self.healthy
