"""The take-over of newly assigned partitions (pure): which halt, where the rest resume, what
each store stores for them; and where a partition goes on after the broker refused its position.

The coordinator (recorder.coordinator.rebalance) does the I/O around these decisions in two
rounds: what it loads (progress, topic IDs, log ends) decides the halts (`judge`); the stores
then store the reset policy's start for the partitions they have none of, and what they hold
then and the log starts decide the seeks (`place`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum

from recorder.core.offsets import (
    TP,
    beyond_log_end,
    recreated_topic,
    seek_position,
    vanished_progress,
)
from recorder.core.partitions import HaltedAt

# Per sink name, its progress (or topic ID) per partition.
Progress = Mapping[str, Mapping[TP, int | None]]
TopicIds = Mapping[str, Mapping[TP, str | None]]


def gap_topics(progress: Progress, tps: Collection[TP]) -> set[str]:
    """Topics with a partition some sink has progress for and another has none: only for them
    is it worth listing the partitions each sink holds progress for (`vanished_progress`)."""
    return {tp.topic for tp in tps if len({p[tp] is None for p in progress.values()}) > 1}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The halts found before any store is written: `halts` (in the order of `tps`), of which
    `sticky` are earlier halts whose progress did not change; `live` are taken over."""

    halts: dict[TP, HaltedAt]
    sticky: frozenset[TP]
    live: frozenset[TP]


def judge(
    tps: Collection[TP],
    progress: Progress,
    ends: Mapping[TP, int],
    current_ids: Mapping[str, str | None],
    recorded_ids: TopicIds,
    known: Mapping[str, Mapping[str, set[int]]],
    earlier: Mapping[TP, HaltedAt | None],
) -> Verdict:
    """Halt a partition whose progress lies past its log end, counts another incarnation of its
    topic, or vanished from one store; an earlier halt stays while the progress is the same (a
    recreated log may outgrow the old progress, but resuming there would still skip its first
    records: only a changed progress — reset-progress — frees it)."""
    halts: dict[TP, HaltedAt] = {}
    sticky: set[TP] = set()
    for tp in tps:
        values = tuple(p[tp] for p in progress.values())
        before = earlier.get(tp)
        if before is not None and before.progress == values:
            halts[tp] = before
            sticky.add(tp)
            continue
        beyond = beyond_log_end(values, ends.get(tp))
        top = max((v for v in values if v is not None), default=0)
        end = ends.get(tp, 0)
        recreated = recreated_topic(current_ids.get(tp.topic), recorded_ids, tp)
        vanished = vanished_progress(progress, known, tp)
        if beyond is not None:
            halts[tp] = HaltedAt(values, beyond, ends[tp])
        elif recreated is not None:
            halts[tp] = HaltedAt(values, top, end, recreated=recreated)
        elif vanished is not None:
            halts[tp] = HaltedAt(values, top, end, vanished=vanished)
    return Verdict(halts, frozenset(sticky), frozenset(tps) - halts.keys())


def missing_starts(
    progress: Mapping[TP, int | None], unknown: Collection[TP], starts: Mapping[TP, int]
) -> dict[TP, int]:
    """The reset policy's starts one sink stores: for the partitions it has no progress of (a
    sink's known progress is never replaced because another sink has none)."""
    return {tp: starts[tp] for tp in unknown if progress[tp] is None}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the live partitions resume: `seeks` (None: no sink holds a position), `lost` the
    ranges [position, log start) retention deleted before they were recorded (they resume at
    the log start), `halts` those that halt instead (ON_LOG_TRUNCATION=halt), `learn` the topic
    ID each store records for the partitions its progress now counts."""

    seeks: dict[TP, int | None]
    lost: dict[TP, tuple[int, int]]
    halts: dict[TP, HaltedAt]
    learn: dict[str, dict[TP, str]]

    @property
    def live(self) -> set[TP]:
        return set(self.seeks)


def place(
    live: Collection[TP],
    progress: Progress,
    log_starts: Mapping[TP, int],
    halt_on_truncation: bool,
    current_ids: Mapping[str, str | None],
    recorded_ids: TopicIds,
) -> Placement:
    """Each live partition resumes at the smallest progress any sink holds — at its log start
    when that lies below it (the loss is counted), or it halts there when so configured."""
    seeks = {tp: seek_position(p[tp] for p in progress.values()) for tp in live}
    lost: dict[TP, tuple[int, int]] = {}
    halts: dict[TP, HaltedAt] = {}
    for tp in sorted(live):
        position, start = seeks[tp], log_starts.get(tp)
        if position is None or start is None or position >= start:
            continue
        if halt_on_truncation:
            values = tuple(p[tp] for p in progress.values())
            halts[tp] = HaltedAt(values, position, start, truncated=True)
            del seeks[tp]
        else:
            lost[tp] = (position, start)
            seeks[tp] = start
    learn = {
        sink: {
            tp: topic_id
            for tp in seeks
            if (topic_id := current_ids.get(tp.topic)) is not None
            and recorded_ids[sink].get(tp) is None
            and progress[sink][tp] is not None
        }
        for sink in progress
    }
    return Placement(seeks, lost, halts, {sink: ids for sink, ids in learn.items() if ids})


class Move(Enum):
    """Where a partition whose fetch position the broker refused goes on."""

    TAKE_OVER = "take_over"  # no position at all: taken over again from the sinks' progress
    HALT_PAST_END = "halt_past_end"  # past the log end: the log was replaced
    TRUNCATED = "truncated"  # below the log start: resume there (loss counted), or halt
    RETRY = "retry"  # within the log again (a leader change): seek there and fetch again


def reposition(position: int | None, log_start: int | None, log_end: int | None) -> Move:
    """The decision for one refused position (the consumer never resets on its own)."""
    if position is None or log_start is None or log_end is None:
        return Move.TAKE_OVER
    if position > log_end:
        return Move.HALT_PAST_END
    if position < log_start:
        return Move.TRUNCATED
    return Move.RETRY


FIX = (
    "stopping this consumer group's recorders (scale to 0), then "
    "`datarecorder reset-progress --topic {topic} --partition {partition} "
    "--to earliest --apply` (it refuses partitions a running member owns)"
)


def halt_reason(tp: TP, at: HaltedAt, sinks: Collection[str]) -> str:
    """The log's sentence for a halt: what is wrong and how an operator resolves it (the probes
    show only its code, `recorder.core.readiness.halt_cause`)."""
    fix = FIX.format(topic=tp.topic, partition=tp.partition)
    name = f"{tp.topic}[{tp.partition}]"
    if at.recreated is not None:
        old, new = at.recreated
        return (
            f"{name} progress {at.beyond} counts the log of topic ID "
            f"{old}, but the topic's ID is now {new}: the topic was deleted and recreated; "
            f"halted; resolve with {fix}"
        )
    if at.vanished is not None:
        held = dict(zip(sinks, at.progress, strict=True))
        fix = fix.replace("--to earliest", "--to <offset>")
        return (
            f"{name} has no progress in {at.vanished} (its progress "
            f"object or row was deleted: a lifecycle rule, by hand) while the stores hold "
            f"{held} and {at.vanished} holds progress for other partitions of the topic: "
            "starting it from the reset policy would record records twice or skip them; "
            f"halted; resolve with {fix}, the offset being where {at.vanished} is complete"
        )
    if at.truncated:
        return (
            f"{name} progress {at.beyond} is below the log start "
            f"{at.log_end}: records {at.beyond}..{at.log_end - 1} were deleted by retention "
            f"before they were recorded; halted (ON_LOG_TRUNCATION=halt); resolve with {fix}"
        )
    return (
        f"{name} progress {at.beyond} is beyond the log end "
        f"{at.log_end} (topic deleted and recreated, or an unclean leader election): "
        f"halted; resolve with {fix}"
    )
