"""The coordinator's two pure decisions: the pause action and the commit policy."""

from __future__ import annotations

import pytest

from recorder.core.backpressure import Action, Buffered, BufferLimits, decide
from recorder.core.commit import commit_offset, committing_sink

LIMITS = BufferLimits(records=100, nbytes=1000)


@pytest.mark.parametrize(
    ("records", "nbytes", "paused", "action"),
    [
        (0, 0, False, Action.RUN),
        (99, 999, False, Action.RUN),
        (100, 0, False, Action.PAUSE),  # records reach their limit first
        (0, 1000, False, Action.PAUSE),  # or bytes do
        (100, 0, True, Action.STAY_PAUSED),
        (99, 999, True, Action.RESUME),
    ],
)
def test_decide(records: int, nbytes: int, paused: bool, action: Action) -> None:
    assert decide(Buffered(records, nbytes), LIMITS, paused) is action


def test_only_pause_and_resume_change_the_consumer() -> None:
    assert [a for a in Action if a.changes] == [Action.PAUSE, Action.RESUME]
    assert [a for a in Action if a.full] == [Action.PAUSE, Action.STAY_PAUSED]


def test_the_hot_path_drives_the_committed_offset_when_enabled() -> None:
    assert committing_sink(["timescaledb", "s3"]) == "timescaledb"
    assert committing_sink(["s3", "timescaledb"]) == "timescaledb"
    assert committing_sink(["s3"]) == "s3"
    assert commit_offset("timescaledb", 42, "timescaledb") == 42
    assert commit_offset("s3", 42, "timescaledb") is None  # the lake must not move it
    assert commit_offset("s3", 42, "s3") == 42


def test_no_sink_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no sink"):
        committing_sink([])
