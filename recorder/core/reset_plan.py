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
  hour *within the flush range*), and flush ranges are cut by S3_BATCH_SIZE, the batch timeout
  and arrival times, so a replay of [new, stored) is cut at other offsets than the first
  recording and its files land under other keys beside the old ones, rather than overwriting
  them. Only progress beyond the log end (the log it counted was replaced: topic deleted and
  recreated, unclean leader election) may move back: the offsets below it name other records now.

Forward moves (skipping records) and first progress (none stored yet) are allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from recorder.core.offsets import TP
from recorder.settings import ConfigError

TIMESCALE = "timescaledb"
LAKE = "s3"


@dataclass(frozen=True, slots=True)
class Stored:
    """A sink's stored progress of a partition as read (offset None: none stored); the lake's
    may hold a pending flush range [offset, flush_end)."""

    offset: int | None
    flush_end: int | None = None


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
    )
    if completable:
        return (
            f"a flush of offsets [{stored.offset}, {pending}) is pending (a recorder stopped "
            "in mid-upload): moving progress now would orphan its files. Start the recorder "
            "to complete it, stop it, then run this again"
        )
    if stored.offset is not None and new < stored.offset <= log_end:
        held = "rows" if sink == TIMESCALE else "files"
        return (
            f"rewind from {stored.offset} to {new}: the {sink} store already holds the {held} "
            f"of offsets {new}..{stored.offset - 1}, which would be recorded twice"
        )
    return None


def plan(
    current: Mapping[str, Mapping[TP, Stored]],
    bounds: Mapping[TP, tuple[int, int]],
    to: str,
    owners: Mapping[TP, str],
) -> list[Change]:
    """One change per partition and sink, in partition order (unchanged ones included, for the
    report), each with its refusal if any."""
    changes = []
    for tp in sorted(bounds):
        start, end = bounds[tp]
        new = target_offset(to, start, end)
        for sink, progress in current.items():
            stored = progress.get(tp, Stored(None))
            why = refusal(sink, stored, new, start, end, owners.get(tp))
            changes.append(Change(tp, sink, stored, new, start, end, why))
    return changes
