"""The partition table's transitions (recorder.core.partitions), without Kafka or a sink."""

from __future__ import annotations

from recorder.core.backpressure import Blocked
from recorder.core.offsets import TP
from recorder.core.partitions import HaltedAt, PartitionTable, Pause, PausePlan, Status

A, B = TP("t", 0), TP("t", 1)


def test_assigned_partitions_take_nothing_until_seeked() -> None:
    table = PartitionTable()
    table.assign([A])
    fetched_under = table.epoch(A)
    assert table.status(A) is Status.ASSIGNED and not table.takes(A, fetched_under)
    table.seeked(A)
    assert table.status(A) is Status.READY
    # A batch fetched before the seek continues from the old position: never offered.
    assert not table.takes(A, fetched_under)
    assert table.takes(A, table.epoch(A))


def test_a_partition_given_to_a_sibling_member_is_the_siblings() -> None:
    table = PartitionTable()
    table.assign([A, B], owner=0)
    table.seeked(A)
    fetched_by_0 = table.epoch(A)
    table.assign([A], owner=1)  # member 0's revocation of A has not run yet
    assert table.status(A) is Status.ASSIGNED
    assert table.owned_by({A, B}, 0) == {B} and table.owned_by({A, B}, 1) == {A}
    table.seeked(A)
    assert table.takes(A, table.epoch(A), 1)
    assert not table.takes(A, table.epoch(A), 0) and not table.takes(A, fetched_by_0, 0)
    table.revoke([A])
    assert table.owned_by({A}, 0) == {A}  # gone from this process: nobody's to keep


def test_a_resync_stops_the_partition_until_its_resync_seek() -> None:
    table = PartitionTable()
    table.assign([A, B])
    table.seeked(A)
    table.seeked(B)
    before = table.epoch(A)
    table.resync(A)
    assert table.status(A) is Status.RESYNC and not table.takes(A, table.epoch(A))
    assert table.epoch(A) > before  # a batch fetched before the resync is stale
    assert table.resyncs({A, B}) == [A]
    assert table.begin_resync(A) and table.may_seek(A)
    table.seeked(A)
    assert table.status(A) is Status.READY and table.resyncs({A, B}) == []


def test_a_resync_during_the_position_look_up_wins_over_the_seek() -> None:
    table = PartitionTable()
    table.assign([A])
    table.seeked(A)
    table.resync(A)
    assert table.begin_resync(A)
    table.resync(A)  # the sink failed again while the position was looked up
    assert not table.may_seek(A) and table.resyncs({A}) == [A]


def test_a_resync_during_take_over_seeks_again_after_it() -> None:
    table = PartitionTable()
    table.assign([A])
    table.resync(A)
    table.seeked(A)
    assert table.status(A) is Status.RESYNC


def test_revoke_during_flush_stops_taking_but_commits_what_the_flush_made_durable() -> None:
    table = PartitionTable()
    table.assign([A])
    table.seeked(A)
    epoch = table.epoch(A)
    table.revoking([A])
    assert not table.takes(A, epoch)
    table.progress(A, 120)  # the revocation's flush finished a batch
    assert table.take_commits({A}) == {A: 120}
    table.resync(A)  # a fenced flush of the revoked partition: nothing to seek any more
    table.revoke([A])
    assert table.status(A) is Status.REVOKED and table.resyncs({A}) == []
    table.progress(A, 130)
    table.revoke([A])
    assert not table.has_pending()


def test_epochs_only_grow_across_revoke_and_reassignment() -> None:
    table = PartitionTable()
    table.assign([A])
    table.seeked(A)
    stale = table.epoch(A)  # a batch fetched just before the revocation
    table.revoking([A])
    table.revoke([A])
    table.assign([A])
    table.seeked(A)
    assert not table.takes(A, stale)


def test_commits_are_taken_once_and_only_for_owned_partitions() -> None:
    table = PartitionTable()
    table.assign([A, B])
    table.progress(A, 10)
    table.progress(B, 20)
    table.progress(A, 15)
    assert table.take_commits({A}) == {A: 15}
    assert table.take_commits({A}) == {}
    assert table.has_pending()
    assert table.take_commits() == {B: 20}
    assert not table.has_pending()


def test_held_partitions_are_released_by_their_seek() -> None:
    table = PartitionTable()
    table.assign([A])
    table.hold(A, "cannot load progress: OSError")
    assert table.held() == {A: "cannot load progress: OSError"}
    table.resync(A)  # ignored: a held partition is taken over as a whole later
    assert table.is_held(A) and table.resyncs({A}) == []
    assert table.seeked(A) is True
    assert table.held() == {} and table.status(A) is Status.READY
    assert table.seeked(A) is False


def test_halt_is_news_once_and_sticky_until_revoked() -> None:
    table = PartitionTable()
    table.assign([A])
    table.seeked(A)
    table.progress(A, 500)
    at = HaltedAt((500, 400), 500, 10)
    assert table.halt(A, at, "beyond") is True
    assert table.halt(A, at, "beyond") is False  # the retry halts again: logged once
    assert table.status(A) is Status.HALTED and table.halted_at(A) == at
    assert not table.has_pending()  # progress past the log end is never committed
    assert table.revoke([A]) == {A}
    assert table.halted_at(A) is None and table.held() == {}


def test_dead_letter_blocks_are_per_partition_and_dropped_on_revoke() -> None:
    table = PartitionTable()
    table.assign([A, B])
    table.block(A, Blocked(10.0, 1, "refused"))
    assert set(table.blocked()) == {A}
    assert table.unblock(A) and not table.unblock(A)
    table.block(B, Blocked(10.0, 1, "refused"))
    table.revoke([B])
    assert table.blocked() == {}


def test_a_partition_never_seen_reads_as_revoked() -> None:
    table = PartitionTable()
    assert table.status(A) is Status.REVOKED and A not in table
    assert not table.takes(A, 0)


# --- the pause plan: every reason in the table, one decision ---------------------------------
def test_the_pause_plan_pauses_a_partition_for_any_reason_and_resumes_the_rest() -> None:
    C, D = TP("t", 2), TP("t", 3)
    table = PartitionTable()
    table.assign([A, B, C, D])
    for tp in (A, B, C, D):
        table.seeked(tp)
    table.hold(B, "cannot load progress")
    table.halt(C, HaltedAt((9,), 9, 3), "past the log end")
    table.block(D, Blocked(retry_at=10.0, failures=1, reason="refused"))
    assert table.reasons(A, 0, now=5.0) == frozenset()
    assert table.reasons(B, 0, now=5.0) == {Pause.HELD}
    assert table.reasons(C, 0, now=5.0) == {Pause.HALTED}
    assert table.reasons(D, 0, now=5.0) == {Pause.DLQ_BACKOFF}
    plan = table.pause_plan({A, B, C, D}, 0, now=5.0)
    assert plan == PausePlan(frozenset({B, C, D}), frozenset({A}))
    # The backoff's end resumes D (its letters are sent again at the next fetch).
    assert table.pause_plan({A, B, C, D}, 0, now=10.0).resume == {A, D}


def test_only_owned_partitions_within_their_backoff_are_paused_for_it() -> None:
    C = TP("t", 2)
    table = PartitionTable()
    table.block(A, Blocked(10.0, 1, "x"))
    table.block(B, Blocked(5.0, 3, "x"))
    assert table.pause_plan({A, B, C}, 0, now=7.0).pause == {A}
    assert table.pause_plan({B, C}, 0, now=7.0).pause == set()  # A is not ours any more
    assert table.pause_plan({A, B}, 0, now=11.0).pause == set()  # retry time: fetch, send again


def test_full_buffers_pause_the_members_partitions_but_those_completing_a_range() -> None:
    table = PartitionTable()
    table.assign([A, B], owner=0)
    table.seeked(A)
    table.seeked(B)
    table.fill(0, True)
    assert table.is_full(0) and not table.is_full(1) and table.members_full() == 1
    assert table.complete({A, B}, {A: (0, 150)}) == [A]
    assert table.complete({A, B}, {A: (0, 150)}) == []  # news once
    assert table.completing() == {A: (0, 150)}
    plan = table.pause_plan({A, B}, 0, now=0.0)
    assert plan.pause == {B} and plan.resume == {A}
    assert table.reasons(B, 0, now=0.0) == {Pause.FULL}
    assert table.reasons(B, 1, now=0.0) == frozenset()  # another member has room
    table.hold(A, "x")  # a held partition stays paused even while it completes a range
    assert table.pause_plan({A, B}, 0, now=0.0).pause == {A, B}
    table.fill(0, False)
    table.complete({A, B}, {})
    assert table.completing() == {} and table.pause_plan({A, B}, 0, now=0.0).pause == {A}


def test_paused_by_setting_pauses_everything_and_revocation_forgets_the_range() -> None:
    table = PartitionTable()
    table.assign([A, B])
    table.seeked(A)
    table.fill(0, True)
    table.complete({A}, {A: (0, 10)})
    table.paused = True
    assert table.pause_plan({A, B}, 0, now=0.0) == PausePlan(frozenset({A, B}), frozenset())
    assert table.reasons(A, 0, now=0.0) == {Pause.PAUSED}
    table.revoke([A])
    assert table.completing() == {}
