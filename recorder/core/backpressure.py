"""When the consumer stops reading: pure rules over buffer sizes and refused dead letters.

Owns the full-buffers decision (`decide`: the whole consumer pauses), the backoff of partitions
whose dead letters the cluster refused (`block`; the partition table pauses them until it ends)
and the cheap estimate of a decoded row's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

import pyarrow as pa

from recorder.core.backoff import Backoff
from recorder.core.columns import ARROW_RSS_FACTOR

MIB: Final = 1024 * 1024
# Without a memory limit: enough for ~800,000 ticks or ~1,200 1,000-level books.
DEFAULT_BUFFER_BYTES: Final = 256 * MIB
# At most the recorder pod's /tmp emptyDir size limit: in-flight batches count in the buffer
# bytes, and their Parquet (smaller than the decoded rows) is what spills to /tmp.
MAX_DERIVED_BUFFER_BYTES: Final = 1024 * MIB
# Buffers take a quarter of the memory limit; the rest is the interpreter and libraries
# (~150 MiB), aiokafka's fetch buffers (up to 64 MiB raw per fetch), one fetch decoded beyond
# the limit, and the flush copies (COPY records with JSON levels, Arrow arrays and Parquet).
BUFFER_SHARE_OF_LIMIT: Final = 4
# A partition whose dead letters were refused first waits this long, then twice as long per
# refusal in a row (capped by RETRY_MAX_BACKOFF_SEC).
DEAD_LETTER_BACKOFF_SEC: Final = 0.5


# cgroup v1 writes "no limit" as a page-rounded 2**63 - 1.
UNLIMITED_FROM: Final = 2**62


def parse_memory_max(text: str | None) -> int | None:
    """A cgroup memory limit file's value in bytes (v2 `memory.max`, v1
    `memory.limit_in_bytes`); None when absent or unlimited ("max", v1's huge number)."""
    if text is None:
        return None
    value = text.strip()
    if not value.isdigit() or int(value) >= UNLIMITED_FROM:
        return None
    return int(value)


def buffer_bytes_limit(setting: int, memory_limit: int | None) -> int:
    """MAX_BUFFER_BYTES when set (> 0), else derived from the container's memory limit."""
    if setting > 0:
        return setting
    if memory_limit is None:
        return DEFAULT_BUFFER_BYTES
    return max(MIB, min(MAX_DERIVED_BUFFER_BYTES, memory_limit // BUFFER_SHARE_OF_LIMIT))


def fetch_limit(max_records: int, room_bytes: int, average_row_bytes: int) -> int:
    """Records one fetch may return so that decoding them stays within the bytes left (at
    least one, so a consumer below its limit always moves)."""
    if average_row_bytes <= 0:
        return max_records
    return max(1, min(max_records, room_bytes // average_row_bytes))


def row_bytes(columns: pa.Table) -> int:
    """Estimated memory of one decoded row of `columns` (sizes the next fetch)."""
    rows = int(columns.num_rows)
    return ARROW_RSS_FACTOR * int(columns.nbytes) // rows if rows else 0


@dataclass(frozen=True, slots=True)
class Blocked:
    """A partition whose dead letters were refused: paused until `retry_at` (monotonic)."""

    retry_at: float
    failures: int
    reason: str


def block(previous: Blocked | None, now: float, reason: str, max_backoff: float) -> Blocked:
    """The next state after a refused send: exponential backoff from 0.5 s, capped."""
    failures = 1 if previous is None else previous.failures + 1
    delay = Backoff(DEAD_LETTER_BACKOFF_SEC, max_backoff).delay(failures)
    return Blocked(now + delay, failures, reason)


def is_full(records: int, nbytes: int, max_records: int, max_bytes: int) -> bool:
    """Buffers are full at whichever limit comes first."""
    return records >= max_records or nbytes >= max_bytes


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """MAX_BUFFER_SIZE and MAX_BUFFER_BYTES (or its derived default)."""

    records: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Buffered:
    """What the sinks hold: the largest sink's records and bytes (they hold the same rows)."""

    records: int
    nbytes: int


class Action(Enum):
    PAUSE = "pause"  # buffers just filled: pause every owned partition, flush everything now
    STAY_PAUSED = "stay_paused"  # still full: pause again (a rebalance assigns unpaused)
    RESUME = "resume"  # room again: resume owned partitions (not held nor blocked ones)
    RUN = "run"  # room, not paused: keep fetching

    @property
    def full(self) -> bool:
        return self in (Action.PAUSE, Action.STAY_PAUSED)

    @property
    def changes(self) -> bool:
        return self in (Action.PAUSE, Action.RESUME)


def decide(buffered: Buffered, limits: BufferLimits, paused: bool) -> Action:
    """The consumer's pause decision for this round of its loop."""
    full = is_full(buffered.records, buffered.nbytes, limits.records, limits.nbytes)
    if full:
        return Action.STAY_PAUSED if paused else Action.PAUSE
    return Action.RESUME if paused else Action.RUN
