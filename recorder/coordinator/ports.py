"""What the coordinator needs from outside, as protocols: one consumer-group member (a Kafka
source), the dead-letter queue, and a clock (the system's, or a test's that it drives).

Owns no behaviour beyond the system clock: the concrete source and queue are in
`recorder.kafka` and are built by `recorder.app`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from recorder.core.offsets import TP
from recorder.kafka.dlq import DeadLetter

RebalanceCallback = Callable[[set[TP]], Awaitable[None]]


class Source(Protocol):
    """One consumer-group member, as the coordinator uses it (recorder.kafka.source.KafkaSource)."""

    index: int

    async def start(
        self, on_revoked: RebalanceCallback, on_assigned: RebalanceCallback
    ) -> None: ...
    async def stop(self) -> None: ...
    def assignment(self) -> set[TP]: ...
    async def fetch(self, timeout_ms: int, max_records: int) -> Mapping[TP, list[Any]]: ...
    def fetched_end(self, tp: TP) -> int | None: ...
    def seek(self, tp: TP, offset: int) -> None: ...
    async def reset_positions(self, tps: Collection[TP]) -> dict[TP, int]: ...
    async def log_starts(self, tps: Collection[TP]) -> dict[TP, int]: ...
    async def topic_ids(self, topics: Collection[str]) -> dict[str, str | None]: ...
    def pause(self, tps: Collection[TP]) -> None: ...
    def resume(self, tps: Collection[TP]) -> None: ...
    async def commit(self, offsets: Mapping[TP, int]) -> None: ...
    def highwater(self, tp: TP) -> int | None: ...
    def stable_end(self, tp: TP) -> int | None: ...
    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]: ...


class DeadLetterQueue(Protocol):
    """Where invalid records go (recorder.kafka.dlq.DeadLetters): `send_many` is acknowledged or
    raises DeadLetterRefused naming the partitions the cluster refused."""

    async def start(self, topics: Sequence[str]) -> None: ...
    async def send_many(self, letters: Sequence[DeadLetter]) -> None: ...
    async def close(self) -> None: ...


class Clock(Protocol):
    """The time the coordinator's decisions read (a fetch stalled, a commit due, a dead-letter
    backoff over) and waits on (the held-partition retry, the health round). The shutdown's
    deadline is not on it: `recorder.cli`'s hard stop counts the process's own time."""

    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The process's monotonic clock and the event loop's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
