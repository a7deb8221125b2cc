"""`reset-progress`'s plan (recorder.core.reset_plan) against a plain reference, on generated
progress maps, log bounds, owners and targets: every field of every change.

The reference restates the rules as a list of (rule, applies?) in priority order, without the
plan's code paths; the integration test (tests/integration/recorder/test_reset_progress.py)
shows each refusal on the real stores.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.core.offsets import TP
from recorder.core.reset_plan import LAKE, TIMESCALE, Change, Stored, plan

TOPIC = "market.tick"


@st.composite
def situations(
    draw: Any,
) -> tuple[dict[str, dict[TP, Stored]], dict[TP, tuple[int, int]], str, dict[TP, str]]:
    n = draw(st.integers(1, 4))
    tps = [TP(TOPIC, p) for p in range(n)]
    bounds = {}
    for tp in tps:
        start = draw(st.integers(0, 60))
        bounds[tp] = (start, start + draw(st.integers(0, 60)))
    offsets = st.none() | st.integers(0, 150)
    current: dict[str, dict[TP, Stored]] = {}
    for sink in draw(st.sampled_from([[TIMESCALE], [LAKE], [TIMESCALE, LAKE]])):
        progress = {}
        for tp in tps:
            if draw(st.booleans()):  # absent from the map: no progress stored
                continue
            offset = draw(offsets)
            pending = None
            if sink == LAKE and offset is not None and draw(st.booleans()):
                pending = offset + draw(st.integers(1, 60))
            progress[tp] = Stored(offset, pending)
        current[sink] = progress
    to = draw(st.sampled_from(["earliest", "latest"]) | st.integers(0, 150).map(str))
    owners = {
        tp: f"member m{tp.partition} (client datarecorder-0, host /10.0.0.{tp.partition})"
        for tp in tps
        if draw(st.booleans())
    }
    return current, bounds, to, owners


def reference_target(to: str, start: int, end: int) -> int:
    return {"earliest": start, "latest": end}.get(to, int(to) if to.isdigit() else -1)


def reference_rule(
    sink: str, stored: Stored, new: int, start: int, end: int, owned: bool
) -> str | None:
    """The first rule that forbids the move, by name (None: allowed or nothing to write)."""
    old = stored.offset
    rules = [
        ("nothing to write", old == new),
        ("owned", owned),
        ("beyond the log end", new > end),
        (
            "pending flush",
            stored.flush_end is not None
            and old is not None
            and start <= old
            and stored.flush_end <= end,
        ),
        ("rewind", old is not None and new < old and old <= end),
    ]
    for name, applies in rules:
        if applies:
            return None if name == "nothing to write" else name
    return None


# The words each refusal must say (the operator acts on them).
WORDS = {
    "owned": ("running member", "stop the recorder"),
    "beyond the log end": ("beyond the log end", "halt"),
    "pending flush": ("pending", "orphan", "Start the recorder"),
    "rewind": ("rewind", "recorded twice"),
}


@settings(max_examples=400, deadline=None)
@given(situations())
def test_plan_matches_the_reference(
    situation: tuple[dict[str, dict[TP, Stored]], dict[TP, tuple[int, int]], str, dict[TP, str]],
) -> None:
    current, bounds, to, owners = situation
    changes = plan(current, bounds, to, owners)
    expected_keys = [(tp, sink) for tp in sorted(bounds) for sink in current]
    assert [(c.tp, c.sink) for c in changes] == expected_keys
    for c in changes:
        start, end = bounds[c.tp]
        stored = current[c.sink].get(c.tp, Stored(None))
        new = reference_target(to, start, end)
        assert (c.stored, c.new, c.log_start, c.log_end) == (stored, new, start, end)
        rule = reference_rule(c.sink, stored, new, start, end, c.tp in owners)
        if rule is None:
            assert c.refusal is None, (c, rule)
        else:
            assert c.refusal is not None, (c, rule)
            for word in WORDS[rule]:
                assert word in c.refusal, (c.refusal, rule)
            if rule == "owned":
                assert owners[c.tp] in c.refusal
        assert c.moves == (c.refusal is None and stored.offset != new)


@settings(max_examples=400, deadline=None)
@given(situations())
def test_no_allowed_move_can_record_twice(
    situation: tuple[dict[str, dict[TP, Stored]], dict[TP, tuple[int, int]], str, dict[TP, str]],
) -> None:
    """The safety properties on their own: whatever the plan allows is a forward move, a first
    progress, or a rewind of progress the log no longer holds; never on an owned partition, never
    past the log end, never over a completable pending flush."""
    current, bounds, to, owners = situation
    for c in plan(current, bounds, to, owners):
        if not c.moves:
            continue
        old = c.stored.offset
        assert c.tp not in owners
        assert c.new <= c.log_end
        assert old is None or c.new > old or old > c.log_end
        if c.stored.flush_end is not None and old is not None:
            assert old < c.log_start or c.stored.flush_end > c.log_end


def test_examples() -> None:
    tp = TP(TOPIC, 0)

    def one(sink: str, stored: Stored, to: str, owned: bool = False) -> Change:
        owners = {tp: "member m (client c, host /h)"} if owned else {}
        [change] = plan({sink: {tp: stored}}, {tp: (10, 100)}, to, owners)
        return change

    assert one(TIMESCALE, Stored(50), "latest").moves  # skipping ahead
    assert one(TIMESCALE, Stored(50), "20").refusal is not None  # rows 20..49 held already
    assert one(TIMESCALE, Stored(500), "earliest").moves  # the log was replaced
    assert one(LAKE, Stored(50, 80), "latest").refusal is not None  # pending, completable
    assert one(LAKE, Stored(500, 600), "earliest").moves  # pending range no longer in the log
    assert one(TIMESCALE, Stored(50), "latest", owned=True).refusal is not None
    assert not one(TIMESCALE, Stored(100), "latest", owned=True).moves  # nothing to write
    assert one(TIMESCALE, Stored(100), "latest", owned=True).refusal is None
    assert one(TIMESCALE, Stored(None), "101").refusal is not None  # would halt


def _member(member_id: str, assignment: list[tuple[str, list[int]]]) -> dict[str, Any]:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    raw = ConsumerProtocolMemberAssignment(0, assignment, b"").encode() if assignment else b""
    return {
        "member_id": member_id,
        "client_id": "datarecorder-0",
        "client_host": f"/{member_id}",
        "member_assignment": raw,
    }


def test_owners_from_the_group_description() -> None:
    from recorder.tools.reset_progress import owners_of

    tps = [TP(TOPIC, 0), TP(TOPIC, 1), TP(TOPIC, 2)]
    stable = {
        "state": "Stable",
        "members": [
            _member("a", [(TOPIC, [0]), ("market.orderbook", [1])]),
            _member("b", [(TOPIC, [2])]),
            _member("c", []),
        ],
    }
    owners = owners_of([stable], tps)
    assert sorted(owners) == [TP(TOPIC, 0), TP(TOPIC, 2)]
    assert owners[TP(TOPIC, 0)] == "member a (client datarecorder-0, host /a)"
    assert "member b" in owners[TP(TOPIC, 2)]
    assert owners_of([{"state": "Empty", "members": []}], tps) == {}
    # Mid-rebalance no assignment is settled: every member may own every partition.
    moving = owners_of([{"state": "PreparingRebalance", "members": [_member("c", [])]}], tps)
    assert sorted(moving) == tps and all("member c" in v for v in moving.values())


def test_a_lake_replay_of_a_rewound_range_lands_under_new_keys() -> None:
    """Why lake rewinds are refused: a file is keyed by the first offset of its recorded flush
    range, so records 0..99 recorded as one file and replayed from 30 (or cut at another
    batch boundary) go to other keys beside the old file instead of overwriting it."""
    from recorder.core.batching import split_by_hour
    from recorder.core.columns import from_rows
    from recorder.core.records import TickRow
    from recorder.runtime.settings import TopicKind
    from recorder.sinks.lake.parquet import object_key

    hour = 1_796_587_200 * 10**9

    def keys(first: int, end: int) -> set[str]:
        offsets = list(range(first, end))
        rows = [TickRow(hour + o, "AAA", 1.0, o, None, None) for o in offsets]
        groups = split_by_hour(from_rows(TopicKind.TICK, offsets, rows))
        return {object_key("p", TopicKind.TICK, h, TOPIC, 0, f) for h, f, _ in groups}

    recorded = keys(0, 100)
    replayed = keys(30, 100) | keys(0, 50) | keys(50, 100)
    assert recorded == {next(iter(keys(0, 50)))}
    assert replayed - recorded  # files at other keys: records 30..99 stored twice


def test_progress_of_a_replaced_log_may_be_rewound_and_its_pending_range_dropped() -> None:
    """Progress whose stored topic ID is not the topic's counts a log that is gone: a rewind
    cannot record anything twice, and its pending range can never be completed."""
    from recorder.core.reset_plan import LAKE, TIMESCALE, Stored, refusal

    assert refusal(TIMESCALE, Stored(1000), 0, 0, 1500, None) is not None
    assert refusal(TIMESCALE, Stored(1000, replaced=True), 0, 0, 1500, None) is None
    assert refusal(LAKE, Stored(1000, 1200), 0, 0, 1500, None) is not None
    assert refusal(LAKE, Stored(1000, 1200, replaced=True), 0, 0, 1500, None) is None
    owner = "member m"
    assert refusal(LAKE, Stored(1000, replaced=True), 0, 0, 1500, owner) is not None
