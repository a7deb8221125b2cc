"""The take-over plan (recorder.core.takeover) and the dead-letter floors (recorder.core.offsets):
which partitions halt, where the rest resume, what each store stores, which letters to send."""

from __future__ import annotations

from recorder.core.offsets import TP, SentLetters, dead_letter_floor
from recorder.core.partitions import HaltedAt
from recorder.core.takeover import (
    Move,
    Progress,
    TopicIds,
    gap_topics,
    halt_reason,
    judge,
    missing_starts,
    place,
    reposition,
)

A, B, C = TP("t", 0), TP("t", 1), TP("t", 2)
NO_IDS: TopicIds = {"db": {}, "lake": {}}


def test_judge_halts_past_the_log_end_a_recreated_topic_and_a_vanished_progress() -> None:
    progress: Progress = {"db": {A: 100, B: 40, C: 5}, "lake": {A: 100, B: None, C: 5}}
    ends = {A: 50, B: 60, C: 60}
    recorded: TopicIds = {"db": {C: "id-1"}, "lake": {}}
    known = {"db": {"t": {0, 1, 2}}, "lake": {"t": {0, 2}}}
    verdict = judge([A, B, C], progress, ends, {"t": "id-2"}, recorded, known, {})
    assert verdict.halts == {
        A: HaltedAt((100, 100), 100, 50),
        B: HaltedAt((40, None), 40, 60, vanished="lake"),
        C: HaltedAt((5, 5), 5, 60, recreated=("id-1", "id-2")),
    }
    assert verdict.live == frozenset() and verdict.sticky == frozenset()


def test_an_earlier_halt_stays_until_the_progress_changes() -> None:
    """A recreated log may outgrow the old progress: only reset-progress frees the partition."""
    earlier = HaltedAt((100,), 100, 50)
    same = judge([A], {"db": {A: 100}}, {A: 500}, {}, {"db": {}}, {}, {A: earlier})
    assert same.halts == {A: earlier} and same.sticky == {A}
    reset = judge([A], {"db": {A: 0}}, {A: 500}, {}, {"db": {}}, {}, {A: earlier})
    assert reset.halts == {} and reset.live == {A}


def test_a_new_partition_or_a_store_enabled_later_is_no_halt() -> None:
    db: dict[TP, int | None] = {A: 10, B: None}
    lake: dict[TP, int | None] = {A: None, B: None}
    progress: Progress = {"db": db, "lake": lake}
    assert gap_topics(progress, [A, B]) == {"t"}
    verdict = judge([A, B], progress, {A: 50, B: 5}, {}, NO_IDS, {"lake": {}}, {})
    assert verdict.halts == {} and verdict.live == {A, B}
    # Only the stores without progress store the reset policy's start.
    assert missing_starts(db, {A, B}, {A: 0, B: 0}) == {B: 0}
    assert missing_starts(lake, {A, B}, {A: 0, B: 0}) == {A: 0, B: 0}


def test_place_resumes_at_the_smallest_progress_or_the_log_start() -> None:
    progress: Progress = {"db": {A: 30, B: 10}, "lake": {A: 0, B: 12}}
    kept = place({A, B}, progress, {A: 0, B: 25}, False, {}, NO_IDS)
    assert kept.seeks == {A: 0, B: 25} and kept.lost == {B: (10, 25)} and kept.halts == {}
    halting = place({A, B}, progress, {A: 0, B: 25}, True, {}, NO_IDS)
    assert halting.seeks == {A: 0} and halting.live == {A}
    assert halting.halts == {B: HaltedAt((10, 12), 10, 25, truncated=True)}


def test_place_has_each_store_learn_the_topic_id_its_progress_counts() -> None:
    progress: Progress = {"db": {A: 5, B: None}, "lake": {A: 5, B: 7}}
    recorded: TopicIds = {"db": {}, "lake": {A: "id-1"}}
    plan = place({A, B}, progress, {}, False, {"t": "id-1"}, recorded)
    assert plan.learn == {"db": {A: "id-1"}, "lake": {B: "id-1"}}
    assert place({A}, progress, {}, False, {"t": None}, recorded).learn == {}


def test_a_refused_position_is_taken_over_halted_resumed_at_the_start_or_retried() -> None:
    assert reposition(None, 0, 10) is Move.TAKE_OVER
    assert reposition(5, None, 10) is Move.TAKE_OVER
    assert reposition(11, 0, 10) is Move.HALT_PAST_END
    assert reposition(3, 5, 10) is Move.TRUNCATED
    assert reposition(7, 5, 10) is Move.RETRY


def test_a_halts_reason_names_the_fix() -> None:
    beyond = halt_reason(A, HaltedAt((100,), 100, 5), ["db"])
    assert "beyond the log end 5" in beyond and "--partition 0 --to earliest" in beyond
    vanished = halt_reason(A, HaltedAt((40, None), 40, 50, vanished="lake"), ["db", "lake"])
    assert "no progress in lake" in vanished and "--to <offset>" in vanished
    assert "{'db': 40, 'lake': None}" in vanished


def test_dead_letters_below_a_floor_are_not_sent_again() -> None:
    assert dead_letter_floor([None, None], None) == -1
    assert dead_letter_floor([10, None], 4) == 10
    letters = SentLetters()
    assert letters.floor(A, [None]) == -1
    letters.acknowledged(A, 5)
    letters.acknowledged(A, 2)  # an older acknowledgement never lowers the floor
    assert letters.floor(A, [None]) == 6 and letters.floor(A, [9]) == 9
    assert letters.floor(B, [None]) == -1
    letters.forget(A)  # a halted partition's log may have been replaced
    assert letters.floor(A, [None]) == -1
