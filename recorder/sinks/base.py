"""What every sink offers the pipeline, and the one retry policy they share.

Owns the Sink protocol (buffer, flush, progress, revoke) and retry-forever-with-backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol, TypeVar

import pyarrow as pa
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from recorder import metrics, telemetry
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


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    retriable: Callable[[BaseException], bool],
    max_backoff: float,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `attempt` until it succeeds; retriable errors back off (jittered, capped), others
    propagate. Cancellation stops it (that is how a revoke or a second signal abandons work)."""

    def before_sleep(state: object) -> None:
        outcome = getattr(state, "outcome", None)
        exc = outcome.exception() if outcome is not None else None
        if exc is not None:
            telemetry.emit(telemetry.STORE_RETRY, what=what, error=f"{type(exc).__name__}: {exc}")
            if on_failure is not None:
                on_failure(exc)

    async for try_ in AsyncRetrying(
        retry=retry_if_exception(retriable),
        wait=wait_exponential_jitter(multiplier=0.1, max=max_backoff, jitter=0.1),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with try_:
            return await attempt()
    raise AssertionError("unreachable")  # pragma: no cover
