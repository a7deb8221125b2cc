"""The kinds table: every kind is complete and consistent across the decoders, the database
(its migrations and the COPY), the lake and the tools, and reading it decides as the branches
it replaced did (topic names, the synthetic feed's order)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.core import commit, reset_plan
from recorder.core.columns import LEVEL_TYPE, decode_batch, from_rows
from recorder.core.kinds import (
    FALLBACK,
    Kind,
    TopicKind,
    all_kinds,
    kind_of,
    kind_table,
    split_topic,
    topic_kind,
)
from recorder.core.records import Limits, decode
from recorder.core.rollups import POLICY_START_NS
from recorder.sinks.lake import config as lake_config
from recorder.sinks.lake.parquet import LAYOUTS, batch_columns, parquet_schema
from recorder.sinks.timescale import config as timescale_config
from recorder.sinks.timescale.encode import COPY_PLANS, FIELDS
from recorder.sinks.timescale.migrate import DbMode, migration_files, plan_migrations
from recorder.tools.produce import FEEDS, FeedSpec, next_kind
from recorder.tools.verify import NORMALISE

KINDS = all_kinds()
T0 = 1_764_133_200_000_000_000
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", re.S)


def created_tables(mode: DbMode) -> dict[str, list[tuple[str, str]]]:
    """Table -> (column, SQL type) as the migrations of `mode` create them."""
    sql = "\n".join(m.sql for m in plan_migrations(migration_files(), mode, set()))
    out: dict[str, list[tuple[str, str]]] = {}
    for table, body in _CREATE.findall(sql):
        columns = []
        for line in body.strip().splitlines():
            name, rest = line.strip().rstrip(",").split(None, 1)
            columns.append((name, rest.removesuffix("NOT NULL").strip()))
        out[table] = columns
    return out


def test_the_table_is_keyed_by_every_topic_kind_once() -> None:
    assert list(kind_table()) == list(TopicKind)
    assert all(kind_of(k).topic_kind is k for k in TopicKind)
    assert FALLBACK in kind_table()
    for field in ("table", "lake_segment"):
        values = [getattr(k, field) for k in KINDS]
        assert len(set(values)) == len(values), f"two kinds share a {field}"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k.topic_kind))
def test_every_kind_is_complete_and_consistent(kind: Kind) -> None:
    """Batch columns = COPY columns = Parquet columns, and the decoded row is the table row."""
    names = kind.schema.names
    assert names[:2] == ["offset", "time_ns"]
    assert kind.schema.field("offset").type == pa.int64() == kind.schema.field("time_ns").type
    time = kind.db_columns[0]
    assert (time.name, time.source, time.sql_type) == ("time", "time_ns", "timestamptz")
    # The decoded row's fields are the table's columns' sources, in order.
    assert kind.row_type._fields == tuple(c.source for c in kind.db_columns)  # type: ignore[attr-defined]
    for column in kind.db_columns:
        assert column.source in names, column
        assert column.sql_type in FIELDS, f"no COPY encoder for {column.sql_type}"
    for column in kind.db_columns[1:]:  # the time is compared in each store's own unit
        assert column.sql_type in NORMALISE, f"verify cannot compare {column.sql_type}"
    assert kind.topic_kind in COPY_PLANS
    # The lake: after `timestamp`, the table's columns, from batch columns of this kind.
    layout = LAYOUTS[kind.topic_kind]
    assert [c.name for c in layout] == [c.name for c in kind.db_columns[1:]]
    levels: Literal["typed", "json"]
    for levels in ("typed", "json"):
        assert set(batch_columns(kind.topic_kind, levels)) <= set(names)
        schema = parquet_schema(kind.topic_kind, "ns", levels)
        assert schema.names == ["timestamp", *kind.db_column_names[1:]]
    assert kind.lake_segment and "/" not in kind.lake_segment
    # Rollups are OHLCV of price and volume, each with its refresh policy's window.
    if kind.rollups:
        assert {"price", "volume"} <= set(names)
        assert set(kind.rollups) <= set(POLICY_START_NS)
    assert kind.topic_kind in FEEDS
    # Every hint names the kind.
    for hint in kind.name_hints:
        assert topic_kind(f"market.{hint}.v1") is kind.topic_kind


@pytest.mark.parametrize("mode", list(DbMode))
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k.topic_kind))
def test_migrations_create_every_kinds_table_as_the_table_says(mode: DbMode, kind: Kind) -> None:
    tables = created_tables(mode)
    assert kind.table in tables, f"no migration creates {kind.table} in {mode} mode"
    assert tables[kind.table] == [(c.name, c.sql_type) for c in kind.db_columns]
    sql = "\n".join(m.sql for m in plan_migrations(migration_files(), mode, set()))
    for view in kind.rollups:
        assert view in sql, f"no migration creates the rollup {view} in {mode} mode"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: str(k.topic_kind))
def test_the_feed_of_every_kind_decodes_both_ways_into_its_schema(kind: Kind) -> None:
    feed = FEEDS[kind.topic_kind]
    values = feed.values(FeedSpec(symbols=3, levels=2), T0, feed.step_ns)
    sample = [next(values)[1] for _ in range(20)]
    stamps = [T0 // 1_000_000] * len(sample)
    table, rejected = decode_batch(kind.topic_kind, sample, list(range(20)), stamps, Limits())
    assert not rejected
    assert table.schema == kind.schema
    rows = [decode(kind.topic_kind, v, s, Limits()) for v, s in zip(sample, stamps, strict=True)]
    assert all(isinstance(r, kind.row_type) for r in rows)
    assert from_rows(kind.topic_kind, list(range(20)), rows).equals(table)


def test_parquet_schemas_are_the_original_services() -> None:
    """DESIGN's Parquet schemas, written out: the layouts must not drift from them."""
    for unit in ("ns", "us"):
        ts = pa.timestamp(unit, tz="UTC")
        assert parquet_schema(TopicKind.TICK, unit, "typed") == pa.schema(
            [
                ("timestamp", ts),
                ("symbol", pa.string()),
                ("price", pa.float64()),
                ("volume", pa.int64()),
                ("change", pa.float64()),
                ("change_rate", pa.float64()),
            ]
        )
        layouts: list[tuple[Literal["typed", "json"], pa.DataType]] = [
            ("typed", LEVEL_TYPE),
            ("json", pa.string()),
        ]
        for levels, level_type in layouts:
            assert parquet_schema(TopicKind.ORDERBOOK, unit, levels) == pa.schema(
                [
                    ("timestamp", ts),
                    ("symbol", pa.string()),
                    ("bids", level_type),
                    ("asks", level_type),
                ]
            )


def test_sink_names_below_the_sinks_are_the_stores_own() -> None:
    """The pure cores sit below the store packages and cannot import their names."""
    assert commit.HOT_PATH == reset_plan.TIMESCALE == timescale_config.SINK
    assert reset_plan.LAKE == lake_config.SINK


def _old_topic_kind(name: str) -> TopicKind:
    """The branches the table replaced."""
    lowered = name.lower()
    if "orderbook" in lowered or "order_book" in lowered or "order-book" in lowered:
        return TopicKind.ORDERBOOK
    if "tick" in lowered:
        return TopicKind.TICK
    raise ValueError(name)


_PIECES = st.sampled_from(
    ["tick", "TICK", "orderbook", "Order_Book", "order-book", "order", "book", ".", "-", "_", "x"]
)


@given(st.lists(_PIECES, max_size=6).map("".join))
def test_topic_names_name_the_kind_they_named_before(name: str) -> None:
    try:
        want: TopicKind | None = _old_topic_kind(name)
    except ValueError:
        want = None
    if want is None:
        with pytest.raises(ValueError, match="cannot tell what topic"):
            topic_kind(name)
    else:
        assert topic_kind(name) is want
        assert split_topic(name) == (name, want)
    for kind in TopicKind:
        assert split_topic(f"{name}:{kind}") == (name, kind)


def test_kind_errors_name_every_kind() -> None:
    with pytest.raises(ValueError, match="kind must be ") as refused:
        split_topic("t:no-such-kind")
    with pytest.raises(ValueError, match="cannot tell what topic 't' carries") as unknown:
        topic_kind("t")
    for kind in TopicKind:
        assert f"'{kind}'" in str(refused.value)
        assert f"'t:{kind}'" in str(unknown.value)


def _old_next_kind(n: int, left: Callable[[TopicKind], bool]) -> TopicKind | None:
    """The interleaving `produce` had before the feeds table (10 ticks : 1 order book)."""
    if not (n % 11 == 10 and left(TopicKind.ORDERBOOK)) and left(TopicKind.TICK):
        return TopicKind.TICK
    if left(TopicKind.ORDERBOOK):
        return TopicKind.ORDERBOOK
    return None


@given(st.integers(0, 10_000), st.sets(st.sampled_from(list(TopicKind))))
def test_the_feed_interleaves_as_before(n: int, exhausted: set[TopicKind]) -> None:
    def left(kind: TopicKind) -> bool:
        return kind not in exhausted

    # The two kinds the branches knew interleave as they did, whatever kinds the table adds.
    known = {kind: FEEDS[kind] for kind in (TopicKind.TICK, TopicKind.ORDERBOOK)}
    assert next_kind(n, known, left) == _old_next_kind(n, left)
