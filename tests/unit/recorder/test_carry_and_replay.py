"""`reset-progress --from-group` (recorder.core.reset_plan.carry_plan) and the dead-letter
replay's pure parts (recorder.tools.dlq_replay, recorder.kafka.dlq.origin_of), on generated inputs."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from recorder.core.offsets import TP
from recorder.core.reset_plan import LAKE, Stored, carry_plan, refusal
from recorder.kafka.dlq import DeadLetter, headers_for, origin_of
from recorder.tools.dlq_replay import Selection, fetched_all, reached

TOPIC = "market.tick"
stored = st.builds(
    lambda off, pending: Stored(off, None if off is None or pending is None else off + pending),
    st.none() | st.integers(0, 150),
    st.none() | st.integers(1, 60),
)


@st.composite
def carries(draw: Any) -> dict[str, Any]:
    tps = [TP(TOPIC, p) for p in range(draw(st.integers(1, 4)))]
    bounds = {}
    for tp in tps:
        start = draw(st.integers(0, 60))
        bounds[tp] = (start, start + draw(st.integers(0, 90)))
    pick = st.sampled_from(tps)
    return {
        "current": draw(st.dictionaries(pick, stored)),
        "old": draw(st.dictionaries(pick, stored)),
        "bounds": bounds,
        "owners": {tp: f"member {tp}" for tp in draw(st.sets(pick))},
        "old_owners": {tp: f"old member {tp}" for tp in draw(st.sets(pick))},
    }


@given(carries())
def test_carry_plan(c: dict[str, Any]) -> None:
    changes = carry_plan(c["current"], c["old"], c["bounds"], c["owners"], c["old_owners"], "old")
    carried = [
        tp for tp in sorted(c["bounds"]) if c["old"].get(tp, Stored(None)).offset is not None
    ]
    assert [ch.tp for ch in changes] == carried  # nothing to carry: no row
    for ch in changes:
        was = c["old"][ch.tp]
        start, end = c["bounds"][ch.tp]
        assert (ch.sink, ch.new, ch.log_start, ch.log_end) == (LAKE, was.offset, start, end)
        assert ch.stored == c["current"].get(ch.tp, Stored(None))
        if ch.tp in c["old_owners"]:
            assert ch.refusal is not None and "consumer group 'old'" in ch.refusal
        elif was.flush_end is not None and start <= was.offset <= was.flush_end <= end:
            assert ch.refusal is not None and "pending" in ch.refusal
        else:  # the same rules as any move of this group's object
            assert ch.refusal == refusal(
                LAKE, ch.stored, was.offset, start, end, c["owners"].get(ch.tp)
            )


letters = st.builds(
    DeadLetter,
    st.text(min_size=1, max_size=20),
    st.integers(0, 10_000),
    st.integers(0, 2**62),
    st.none() | st.binary(max_size=8),
    st.none() | st.binary(max_size=8),
    st.sampled_from(["too_large", "malformed_json", "bad_timestamp", "db_refused"]),
    st.text(max_size=50),
)


@given(letters)
def test_a_dead_letters_headers_say_where_it_came_from(letter: DeadLetter) -> None:
    origin = origin_of(headers_for(letter))
    assert (origin.reason, origin.topic, origin.partition, origin.offset) == (
        letter.reason,
        letter.topic,
        letter.partition,
        letter.offset,
    )


def test_a_letter_without_headers_is_still_a_record() -> None:
    assert origin_of(None) == origin_of([]) == origin_of([("x-recorder-source-offset", b"x")])
    assert origin_of(None).offset is None


@given(
    st.none() | st.frozensets(st.sampled_from(["a", "b", "c"])),
    st.none() | st.integers(0, 100),
    st.none() | st.sampled_from(["a", "b", "c"]),
    st.integers(0, 100),
)
def test_selection(
    reasons: frozenset[str] | None, since: int | None, reason: str | None, ts: int
) -> None:
    want = (reasons is None or reason in reasons) and (since is None or ts >= since)
    assert Selection(reasons, since).takes(reason, ts) is want


ends = st.dictionaries(st.builds(TP, st.just("t.dlq"), st.integers(0, 3)), st.integers(0, 50))


@given(
    ends,
    st.lists(
        st.dictionaries(
            st.builds(TP, st.just("t.dlq"), st.integers(0, 3)), st.none() | st.integers(0, 60)
        ),
        min_size=1,
        max_size=2,
    ),
)
def test_reached_means_every_sink_at_every_end(
    end: dict[TP, int], progress: list[dict[TP, int | None]]
) -> None:
    want = all(
        p.get(tp) is not None and p[tp] >= e  # type: ignore[operator]
        for p in progress
        for tp, e in end.items()
    )
    assert reached(progress, end) is want


@given(
    ends,
    st.dictionaries(
        st.builds(TP, st.just("t.dlq"), st.integers(0, 3)), st.none() | st.integers(0, 60)
    ),
    st.sets(st.builds(TP, st.just("t.dlq"), st.integers(0, 3))),
)
def test_fetched_all(end: dict[TP, int], fetched: dict[TP, int | None], done: set[TP]) -> None:
    want = all(tp in done or (fetched.get(tp) or 0) >= e for tp, e in end.items())
    assert fetched_all(fetched, end, done) is want
