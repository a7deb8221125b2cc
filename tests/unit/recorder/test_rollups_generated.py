"""The vectorised rollups equal their per-row definition over generated ticks (pure).

`rollup_bars` sorts a flush once for every bucket width; `aggregate` builds each bar row by
row. Generated flushes hold what decides a bar: equal and out-of-order times, ticks on bucket
edges, symbols that sort differently as text and as bytes, one symbol or many.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.core.columns import from_rows
from recorder.core.kinds import TopicKind
from recorder.core.records import TickRow
from recorder.core.rollups import ROLLUPS, aggregate, bars
from recorder.sinks.timescale.service import rollup_bars

HOUR_NS = 3600 * 10**9
BASE_NS = 1_764_133_200_000_000_000  # a bucket edge of every width
SYMBOLS = ["005930", "AAPL", "aapl", "Ä", "한국", "x" * 32, "B", ""]

tick_rows = st.lists(
    st.builds(
        TickRow,
        # Few distinct offsets from a bucket edge: equal times and bucket edges are common.
        st.one_of(
            st.sampled_from([0, 1, 59_999_999_999, 60 * 10**9, HOUR_NS - 1, HOUR_NS]),
            st.integers(-2 * HOUR_NS, 3 * HOUR_NS),
        ).map(lambda d: BASE_NS + d),
        st.sampled_from(SYMBOLS),
        st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False),
        st.integers(0, 2**40),
        st.none(),
        st.none(),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(tick_rows)
def test_every_rollup_of_a_flush_equals_aggregating_its_ticks(ticks: list[TickRow]) -> None:
    table = from_rows(TopicKind.TICK, list(range(len(ticks))), ticks)
    got = rollup_bars(table)
    assert set(got) == set(ROLLUPS)
    for view, width in ROLLUPS.items():
        assert got[view].rows() == aggregate(ticks, width), view


@settings(max_examples=100, deadline=None)
@given(tick_rows, st.integers(1, 2 * HOUR_NS))
def test_one_width_equals_aggregating_its_ticks(ticks: list[TickRow], width: int) -> None:
    table = from_rows(TopicKind.TICK, list(range(len(ticks))), ticks)
    got = bars(
        table.column("time_ns").to_numpy(),
        table.column("symbol").combine_chunks(),
        table.column("price").to_numpy(),
        table.column("volume").to_numpy(),
        width,
    )
    assert got.rows() == aggregate(ticks, width)
