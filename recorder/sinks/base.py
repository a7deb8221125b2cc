"""What every sink offers the pipeline.

Owns the Sink protocol (buffer, flush, progress, revoke) and the health model every sink
reports (`Health`); the retry rule they share is recorder.runtime.retry, the driver both stores run on
recorder.sinks.driver.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import pyarrow as pa

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


# The reason of a sink whose store does not answer its probe.
NOT_ANSWERING = "its store does not answer"


@dataclass(frozen=True, slots=True)
class Health:
    """A sink's health: `ok`, or why not (in the log; /ready shows the sink's reason code)."""

    ok: bool
    reason: str = ""


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

    async def load_identity(self, tps: Collection[TP]) -> dict[TP, str | None]:
        """The Kafka topic ID each partition's stored progress counts (None: no progress, or
        not known yet). Called after `load_progress` of the same partitions."""
        ...

    async def store_identity(self, ids: Mapping[TP, str]) -> None:
        """Record the topic ID of partitions whose progress has none yet."""
        ...

    async def known_partitions(self, topics: Collection[str]) -> dict[str, set[int]]:
        """The partitions of each topic this store holds progress for."""
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
    def completing(self) -> dict[TP, tuple[int, int]]:
        """Partitions whose buffer can only be flushed once it reaches the end of a range
        [start, end) recorded before (the lake's pending flush range): they must be fed on
        even while the buffers are full, or the range never completes."""
        ...

    async def flush_all(self, tps: Collection[TP] | None = None) -> None: ...
    def revoke(self, tps: Collection[TP]) -> None: ...
    async def abandon(self, tps: Collection[TP]) -> None: ...
    async def check_health(self) -> bool:
        """Probe the store; sets `healthy` (and the sink_healthy metric)."""
        ...

    def health(self) -> Health:
        """The sink's health as last seen (no I/O): why it is not ok, if it is not."""
        ...

    def failure(self) -> str | None:
        """Why one of the sink's long-running tasks died, if one did."""
        ...
