"""Where `datarecorder reset-progress` may move each sink's progress of a partition (pure).

Owns the refusals. A move is written only where it cannot make a store hold a record twice or
lose track of an upload:

* a partition assigned to a running member of the consumer group is refused: its owner would
  go on from the position it holds (stop the recorder first);
* a target beyond the log end is refused: the partition would halt on it;
* a lake partition with a pending flush range [N, E) is refused while the log still holds that
  range: some of its files may be in the lake already, and only a writer that completes exactly
  that range puts the rest (DESIGN rule 4). Carrying the range over to a moved progress would
  break the protocol's "[N, E) starts at the progress", and dropping it would orphan those
  files. Starting the recorder completes it. A range the log no longer holds (the log was
  replaced or truncated) can never be completed: then the move is allowed and drops it;
* a rewind (new < stored) is refused on both sinks while the stored progress lies within the
  log: the database already holds the rows of [new, stored) and `tick_data` has no key to
  recognise them, so they would be recorded twice (and counted twice in the rollups). The lake
  would hold them twice too: a file's key is (topic, partition, event hour, first offset of the
  flush range), and flush ranges are cut by S3_BATCH_SIZE, the batch timeout
  and arrival times, so a replay of [new, stored) is cut at other offsets than the first
  recording and its files land under other keys beside the old ones, rather than overwriting
  them. Only progress of a replaced log may move back — beyond the log end (topic deleted and
  recreated, unclean leader election), or counting another topic ID than the topic's (deleted
  and recreated, and the new log already longer): the offsets below it name other records now.

Forward moves (skipping records) and first progress (none stored yet) are allowed.

Also owns where a point of the log lands in a partition, for `--to-time` and START_FROM alike
(`at_time`, `start_position`), and the plan of `--from-group` (`carry_plan`): the lake's
progress of another consumer group carried over to this one, under the same refusals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from recorder.core.errors import ConfigError
from recorder.core.offsets import TP
from recorder.core.start_from import StartFrom

TIMESCALE = "timescaledb"
LAKE = "s3"


@dataclass(frozen=True, slots=True)
class Stored:
    """A sink's stored progress of a partition as read (offset None: none stored); the lake's
    may hold a pending flush range [offset, flush_end)."""

    offset: int | None
    flush_end: int | None = None
    # The progress counts another incarnation of the topic (its stored topic ID is not the
    # topic's): the log it counted is gone, whatever the offsets say.
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    tp: TP
    sink: str
    stored: Stored
    new: int
    log_start: int
    log_end: int
    refusal: str | None  # why it must not be written; None when it may be

    @property
    def moves(self) -> bool:
        """Whether applying it writes anything (allowed and not already the stored value)."""
        return self.refusal is None and self.stored.offset != self.new


def target_offset(to: str, log_start: int, log_end: int) -> int:
    """The offset `--to` names for a partition whose log holds [log_start, log_end)."""
    if to == "earliest":
        return log_start
    if to == "latest":
        return log_end
    try:
        value = int(to)
    except ValueError:
        raise ConfigError(f"--to {to!r}: expected earliest, latest or an offset >= 0") from None
    if value < 0:
        raise ConfigError(f"--to {to!r}: expected earliest, latest or an offset >= 0")
    return value


def refusal(
    sink: str, stored: Stored, new: int, log_start: int, log_end: int, owner: str | None
) -> str | None:
    """Why moving `sink`'s progress from `stored` to `new` must not be written (None: it may)."""
    if stored.offset == new:
        return None  # nothing to write
    if owner is not None:
        return (
            f"assigned to {owner}, a running member of the consumer group: stop the recorder "
            "first (DataRecorder spec.state: stopped, or 0 replicas), then run this again"
        )
    if new > log_end:
        return f"{new} lies beyond the log end {log_end}: the partition would halt there"
    pending = stored.flush_end
    completable = (  # the log still holds the pending range: a recorder can complete it
        pending is not None
        and stored.offset is not None
        and log_start <= stored.offset
        and pending <= log_end
        and not stored.replaced
    )
    if completable:
        return (
            f"a flush of offsets [{stored.offset}, {pending}) is pending (a recorder stopped "
            "in mid-upload): moving progress now would orphan its files. Start the recorder "
            "to complete it, stop it, then run this again"
        )
    if stored.offset is not None and new < stored.offset <= log_end and not stored.replaced:
        held = "rows" if sink == TIMESCALE else "files"
        return (
            f"rewind from {stored.offset} to {new}: the {sink} store already holds the {held} "
            f"of offsets {new}..{stored.offset - 1}, which would be recorded twice"
        )
    return None


def at_time(found: int | None, log_start: int, log_end: int) -> int:
    """Where a time lands in a partition whose log holds [log_start, log_end): the offset of
    its first record stamped at or after the time (Kafka's offsets_for_times, `found`), or the
    log end when it holds none (`found` None). Kept within the log's bounds: the answer comes
    from another request than the bounds, and the log may have moved in between."""
    if found is None:
        return log_end
    return min(max(found, log_start), log_end)


def start_position(
    start_from: StartFrom,
    found: int | None,
    log_start: int,
    log_end: int,
    topic_recorded: bool,
) -> int:
    """Where START_FROM starts a partition no sink has progress for. `found` is the
    offsets_for_times answer of a `time` start. An `offset` start is kept within the log's
    bounds (below the start: deleted, nothing to read; above the end: nothing there yet), and
    does not apply to a partition added to a topic this group already records: its first
    records came after the recording began, so it starts at its beginning (as with `latest`).
    A time needs no such exception: whether a record is at or after it is the record's own."""
    if start_from.kind == "time":
        return at_time(found, log_start, log_end)
    if topic_recorded:
        return log_start
    return min(max(start_from.value, log_start), log_end)


def plan(
    current: Mapping[str, Mapping[TP, Stored]],
    bounds: Mapping[TP, tuple[int, int]],
    to: str | Mapping[TP, int],
    owners: Mapping[TP, str],
) -> list[Change]:
    """One change per partition and sink, in partition order (unchanged ones included, for the
    report), each with its refusal if any. `to` is `--to`'s value, or the target of each
    partition (`--to-time`: `at_time`)."""
    changes = []
    for tp in sorted(bounds):
        start, end = bounds[tp]
        new = target_offset(to, start, end) if isinstance(to, str) else to[tp]
        for sink, progress in current.items():
            stored = progress.get(tp, Stored(None))
            why = refusal(sink, stored, new, start, end, owners.get(tp))
            changes.append(Change(tp, sink, stored, new, start, end, why))
    return changes


def carry_plan(
    current: Mapping[TP, Stored],
    old: Mapping[TP, Stored],
    bounds: Mapping[TP, tuple[int, int]],
    owners: Mapping[TP, str],
    old_owners: Mapping[TP, str],
    old_group: str,
) -> list[Change]:
    """`--from-group OLD` on the lake: each partition's progress of group OLD becomes this
    group's. Partitions OLD has no progress for are left out (nothing to carry). Refused, on
    top of `refusal`'s rules for this group's object: a partition a running member of OLD is
    assigned (it would go on recording beside us), and a flush OLD left pending that the log
    still holds (only a writer of OLD's range completes it; dropping it would orphan its
    files)."""
    changes = []
    for tp in sorted(bounds):
        was = old.get(tp, Stored(None))
        if was.offset is None:
            continue
        start, end = bounds[tp]
        stored = current.get(tp, Stored(None))
        why: str | None = None
        if tp in old_owners:
            why = (
                f"assigned to {old_owners[tp]}, a running member of consumer group "
                f"{old_group!r}: stop those recorders first, then run this again"
            )
        elif was.flush_end is not None and start <= was.offset and was.flush_end <= end:
            why = (
                f"group {old_group!r} has a flush of offsets [{was.offset}, {was.flush_end}) "
                f"pending (a recorder stopped in mid-upload): start a recorder of group "
                f"{old_group!r} to complete it, stop it, then run this again"
            )
        else:
            why = refusal(LAKE, stored, was.offset, start, end, owners.get(tp))
        changes.append(Change(tp, LAKE, stored, was.offset, start, end, why))
    return changes
