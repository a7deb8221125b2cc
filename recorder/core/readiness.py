"""Pure: what /ready and /health may say about a part that is not well.

Anyone who reaches the pod's port reads these bodies, so they carry a reason *code* and a fixed
sentence per code, never an error's text (hosts, buckets, user names, SQL). The raw error is in
the log event the sentence names. Partitions are named (`topic[partition]`): they are not secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from recorder.core.partitions import HaltedAt

# Code → the fixed sentence the probes print after it (README lists the same codes).
REASONS: Final[dict[str, str]] = {
    "starting": "migrations or joining the Kafka group are not done yet",
    "stopping": "the recorder is shutting down",
    "consumer_not_fetching": "the consumer has not fetched from Kafka recently",
    "consumer_failed": "the consumer loop failed and the recorder stops (log: consumer_failed)",
    "paused": "PAUSED is true: the consumer fetches nothing",
    "store_unreachable": "its store does not answer (log: store_retry, flush_failed)",
    "writes_failing": "writes to its store fail (log: flush_failed)",
    "partition_halted": (
        "partitions halted; resolve with `datarecorder reset-progress` (log: partition_halted)"
    ),
    "partition_held": "partitions cannot load their progress; retried (log: assignment_failed)",
    "dead_letters_refused": (
        "the cluster refuses dead letters; their partitions are paused (log: dead_letters_refused)"
    ),
    "buffers_full_completing_range": (
        "buffers full; all partitions paused but those completing a pending lake range recorded "
        "with larger buffers than this pod has"
    ),
    # Why a partition halted (one per partition, after its name).
    "log_replaced": "the progress is beyond the log end",
    "topic_recreated": "the topic's ID changed",
    "progress_vanished": "one store lost the partition's progress",
    "log_truncated": "records were deleted by retention before they were recorded",
}

# At most this many partitions are named on one line; the rest are counted.
NAMED_PARTITIONS: Final = 5


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one part is not well: a code of `REASONS`, and the partitions it concerns, each with
    an optional cause code of `REASONS` (e.g. why it halted)."""

    code: str
    partitions: tuple[tuple[str, int, str | None], ...] = ()

    def __post_init__(self) -> None:
        for code in (self.code, *(c for _, _, c in self.partitions if c is not None)):
            if code not in REASONS:
                raise ValueError(f"unknown reason code {code!r}")


def halt_cause(at: HaltedAt) -> str:
    """The code of why a partition halted."""
    if at.recreated is not None:
        return "topic_recreated"
    if at.vanished is not None:
        return "progress_vanished"
    if at.truncated:
        return "log_truncated"
    return "log_replaced"


def partitions_problem(code: str, tps: Iterable[tuple[str, int, str | None]]) -> Problem:
    return Problem(code, tuple(sorted(tps, key=lambda t: (t[0], t[1]))))


def describe(part: str, problem: Problem) -> str:
    """One line of a probe's body: `<part>: <code> [<partitions>] - <fixed sentence>`."""
    named = [
        f"{topic}[{partition}]" + (f" {cause}" if cause is not None else "")
        for topic, partition, cause in problem.partitions[:NAMED_PARTITIONS]
    ]
    more = len(problem.partitions) - NAMED_PARTITIONS
    if more > 0:
        named.append(f"and {more} more")
    where = f" ({', '.join(named)})" if named else ""
    return f"{part}: {problem.code}{where} - {REASONS[problem.code]}"
