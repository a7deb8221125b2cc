"""The partition table (pure): one state per topic-partition this process was ever assigned.

Owns each partition's status, seek epoch, pending commit, hold reason, halt record, dead-letter
backoff and every reason it is paused for — what `Recorder` once kept in parallel collections
that sinks changed through callbacks (aiokafka keeps the same in one `TopicPartitionState`, and
derives `paused_partitions()` from it). No I/O: the coordinator asks the table what to do
(`pause_plan`: which partitions to pause and resume) and does it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from recorder.core.backpressure import Blocked
from recorder.core.offsets import TP


class Status(Enum):
    # Owned, not yet seeked to the sinks' position: records fetched for it (around a
    # rebalance) are neither dead-lettered nor offered; they come again from the seek.
    ASSIGNED = "assigned"
    READY = "ready"  # seeked: fetched records are decoded and offered to the sinks
    # A sink restarted the partition's buffer at its stored progress (fenced, failed, a refused
    # dead letter): it takes nothing until the consumer is seeked there again. Records fetched
    # from the old position would open the new buffer past a gap.
    RESYNC = "resync"
    HELD = "held"  # assigned but not taken: its progress could not be loaded; retried
    HALTED = "halted"  # a sink's progress lies past the log end: until reset-progress
    REVOKED = "revoked"  # given up in a rebalance (kept so its epoch only ever grows)


@dataclass(frozen=True, slots=True)
class HaltedAt:
    """Each sink's progress when a partition halted, and the numbers shown: past its log end
    (`beyond` > `log_end`), or, when `truncated`, below its log start (`beyond` is where the
    sinks would resume, `log_end` the log start). `recreated` (stored topic ID, current one):
    the progress counts another incarnation of the topic. `vanished` names a sink whose
    progress of the partition is gone while another sink's is not."""

    progress: tuple[int | None, ...]
    beyond: int
    log_end: int
    truncated: bool = False
    recreated: tuple[str, str] | None = None
    vanished: str | None = None


@dataclass(slots=True)
class PartitionState:
    status: Status = Status.ASSIGNED
    # Bumped at every seek (and resync) of the partition: a fetched batch is offered only if
    # the epoch it was fetched under is still current.
    epoch: int = 0
    pending_commit: int | None = None  # hot-path progress not yet committed to Kafka
    reason: str | None = None  # why HELD or HALTED (shown on /ready)
    # Sticky across retries of a halted partition: a recreated log may outgrow the old
    # progress, but resuming there would still skip its first records.
    halted_at: HaltedAt | None = None
    blocked: Blocked | None = None  # dead letters refused: paused until the backoff ends
    # The group member (NUM_CONSUMERS>1: one of several in this process) the partition was last
    # given to. A member's late revocation may only touch partitions it still owns.
    owner: int | None = None
    # While its member's buffers are full: the pending lake range [first, end) it is fed on to
    # complete (pausing it with the rest would wedge the pod: full buffers no flush can empty).
    completing: tuple[int, int] | None = None


HOLDING = frozenset({Status.HELD, Status.HALTED})


class Pause(Enum):
    """Why a partition is not read now; any one reason pauses it."""

    PAUSED = "paused"  # PAUSED=true: the pod keeps its membership, records nothing
    # Its member's buffers are full (backpressure) and it completes no pending lake range: a
    # partition fed on to complete a range that can only be flushed whole is not paused for it.
    FULL = "full"
    DLQ_BACKOFF = "dlq_backoff"  # its dead letters were refused: until the backoff ends
    HELD = "held"  # its progress could not be loaded: until the held-partition retry takes it
    HALTED = "halted"  # its progress does not fit its log: until reset-progress


@dataclass(frozen=True, slots=True)
class PausePlan:
    """What to tell one consumer: pause these owned partitions, resume the rest it owns (both
    are idempotent in aiokafka, and a rebalance assigns partitions unpaused, so the whole
    plan is applied every time rather than a difference from the last one)."""

    pause: frozenset[TP]
    resume: frozenset[TP]


class PartitionTable:
    """Every partition's state, one owner (the coordinator); transitions are methods."""

    def __init__(self) -> None:
        self._states: dict[TP, PartitionState] = {}
        self.paused = False  # PAUSED=true: every partition is paused (set by the coordinator)
        self._full: set[int] = set()  # members whose buffers are full (backpressure)

    def __contains__(self, tp: object) -> bool:
        return tp in self._states

    def __iter__(self) -> Iterator[TP]:
        return iter(self._states)

    def state(self, tp: TP) -> PartitionState:
        """The partition's state (a fresh REVOKED one for a partition never seen)."""
        return self._states.get(tp) or PartitionState(Status.REVOKED)

    def _get(self, tp: TP) -> PartitionState:
        state = self._states.get(tp)
        if state is None:
            state = self._states[tp] = PartitionState(Status.REVOKED)
        return state

    def status(self, tp: TP) -> Status:
        return self.state(tp).status

    def epoch(self, tp: TP) -> int:
        return self.state(tp).epoch

    def epochs(self, tps: Iterable[TP]) -> dict[TP, int]:
        return {tp: self.epoch(tp) for tp in tps}

    def takes(self, tp: TP, epoch: int, member: int = 0) -> bool:
        """Whether a batch `member` fetched under `epoch` may be decoded and offered now (not
        one a member fetched from its old position after a sibling was given the partition)."""
        state = self.state(tp)
        return (
            state.status is Status.READY and state.epoch == epoch and state.owner in (member, None)
        )

    # --- transitions ------------------------------------------------------------------------
    def assign(self, tps: Iterable[TP], owner: int = 0) -> None:
        """A rebalance gave these partitions to member `owner`: waiting for their seek. A
        partition taken from a sibling member whose revocation has not run yet changes hands
        here: it takes nothing until the new owner's seek (its epoch moves then)."""
        for tp in tps:
            state = self._get(tp)
            if state.status is Status.REVOKED or state.owner != owner:
                state.status = Status.ASSIGNED
            state.owner = owner

    def owned_by(self, tps: Iterable[TP], owner: int) -> set[TP]:
        """Those of `tps` that member `owner` was given last (a partition never assigned in
        this process counts as the revoking member's: it has nothing to lose)."""
        return {tp for tp in tps if self.state(tp).owner in (owner, None)}

    def seeked(self, tp: TP) -> bool:
        """The consumer was seeked to the sinks' position: the partition takes records again,
        unless a sink asked for a resync meanwhile (then the resync seeks it once more).
        True when this released a held or halted partition."""
        state = self._get(tp)
        state.epoch += 1
        released = state.status in HOLDING
        if state.status is not Status.RESYNC:
            state.status = Status.READY
        state.reason = None
        return released

    def resync(self, tp: TP) -> None:
        """A sink dropped the partition's buffer: take nothing until seeked to its progress.
        A held, halted or revoked partition stays so (it is taken over as a whole later)."""
        state = self._get(tp)
        state.epoch += 1
        if state.status in (Status.READY, Status.ASSIGNED):
            state.status = Status.RESYNC

    def resyncs(self, owned: Collection[TP]) -> list[TP]:
        """Owned partitions waiting for their resync seek."""
        return sorted(tp for tp in owned if self.status(tp) is Status.RESYNC)

    def begin_resync(self, tp: TP) -> bool:
        """Start the resync seek (the position is looked up next): False when the partition
        no longer waits for one. A second resync during the look-up sets RESYNC again."""
        state = self._get(tp)
        if state.status is not Status.RESYNC:
            return False
        state.status = Status.ASSIGNED
        return True

    def may_seek(self, tp: TP) -> bool:
        """After the look-up: seek only if nothing (a resync, a hold, a revoke) came between."""
        return self.status(tp) is Status.ASSIGNED

    def hold(self, tp: TP, reason: str) -> None:
        state = self._get(tp)
        state.status = Status.HELD
        state.reason = reason

    def halt(self, tp: TP, at: HaltedAt, reason: str) -> bool:
        """Halt past the log end; True when this is news (not the same halt again)."""
        state = self._get(tp)
        news = not (state.status in HOLDING and state.reason == reason)
        state.status = Status.HALTED
        state.reason = reason
        state.halted_at = at
        state.pending_commit = None
        return news

    def clear_halt(self, tp: TP) -> None:
        self._get(tp).halted_at = None

    def revoking(self, tps: Iterable[TP]) -> None:
        """A revocation started: the partitions take nothing more while their buffers flush
        (progress reported meanwhile is still committed before they are given up)."""
        for tp in tps:
            self._get(tp).status = Status.REVOKED

    def revoke(self, tps: Iterable[TP]) -> set[TP]:
        """Given up: forget all but the epoch. Returns those that were held or halted."""
        released: set[TP] = set()
        for tp in tps:
            state = self._get(tp)
            if state.status in HOLDING or state.reason is not None:
                released.add(tp)
            self._states[tp] = PartitionState(Status.REVOKED, epoch=state.epoch, owner=None)
        return released

    # --- held and halted --------------------------------------------------------------------
    def held(self) -> dict[TP, str]:
        """Partitions assigned but not taken, with the reason."""
        return {
            tp: s.reason or s.status.value for tp, s in self._states.items() if s.status in HOLDING
        }

    def is_held(self, tp: TP) -> bool:
        return self.status(tp) in HOLDING

    def halted_at(self, tp: TP) -> HaltedAt | None:
        return self.state(tp).halted_at

    # --- pausing ----------------------------------------------------------------------------
    def fill(self, member: int, full: bool) -> None:
        """Member `member`'s buffers are full (or have room again)."""
        if full:
            self._full.add(member)
        else:
            self._full.discard(member)

    def is_full(self, member: int) -> bool:
        return member in self._full

    def members_full(self) -> int:
        return len(self._full)

    def complete(self, owned: Collection[TP], ranges: Mapping[TP, tuple[int, int]]) -> list[TP]:
        """The owned partitions fed on to complete a pending range are those of `ranges` (none
        once the member has room); returns those that were not before."""
        started = []
        for tp in owned:
            span = ranges.get(tp)
            state = self._states.get(tp)
            if state is None:
                if span is None:
                    continue
                state = self._get(tp)
            if span is not None and state.completing is None:
                started.append(tp)
            state.completing = span
        return sorted(started)

    def completing(self) -> dict[TP, tuple[int, int]]:
        return {tp: s.completing for tp, s in self._states.items() if s.completing is not None}

    def reasons(self, tp: TP, member: int, now: float) -> frozenset[Pause]:
        """Why member `member` must not read `tp` at monotonic time `now` (empty: read it)."""
        state = self.state(tp)
        reasons = set()
        if self.paused:
            reasons.add(Pause.PAUSED)
        if member in self._full and state.completing is None:
            reasons.add(Pause.FULL)
        if state.blocked is not None and now < state.blocked.retry_at:
            reasons.add(Pause.DLQ_BACKOFF)
        if state.status is Status.HELD:
            reasons.add(Pause.HELD)
        elif state.status is Status.HALTED:
            reasons.add(Pause.HALTED)
        return frozenset(reasons)

    def pause_plan(self, owned: Collection[TP], member: int, now: float) -> PausePlan:
        """The one pause decision: which of the partitions member `member` owns to pause (those
        with any reason) and which to resume (the rest)."""
        paused = frozenset(tp for tp in owned if self.reasons(tp, member, now))
        return PausePlan(paused, frozenset(owned) - paused)

    # --- commits ----------------------------------------------------------------------------
    def progress(self, tp: TP, offset: int) -> None:
        """The committing sink made `offset` durable: commit it to Kafka at the next round
        (only to an owner: `take_commits` filters by assignment, `revoke` drops the rest)."""
        self._get(tp).pending_commit = offset

    def has_pending(self) -> bool:
        return any(s.pending_commit is not None for s in self._states.values())

    def take_commits(self, owned: Collection[TP] | None = None) -> dict[TP, int]:
        """Pending commits of `owned` (all when None), cleared: each is committed once."""
        taken: dict[TP, int] = {}
        for tp, state in self._states.items():
            if state.pending_commit is not None and (owned is None or tp in owned):
                taken[tp] = state.pending_commit
                state.pending_commit = None
        return taken

    # --- dead-letter backoff ----------------------------------------------------------------
    def block(self, tp: TP, blocked: Blocked) -> None:
        self._get(tp).blocked = blocked

    def unblock(self, tp: TP) -> bool:
        """The partition's dead letters were accepted; True when it had been blocked."""
        state = self._states.get(tp)
        if state is None or state.blocked is None:
            return False
        state.blocked = None
        return True

    def blocked(self) -> dict[TP, Blocked]:
        return {tp: s.blocked for tp, s in self._states.items() if s.blocked is not None}
