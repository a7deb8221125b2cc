"""The record kinds a topic can carry, one row of a table per kind, and how a topic names its kind.

Owns `TopicKind` and `kind_table()`: per kind its topic-name hints, database table and columns,
batch (Arrow) columns, decoders (the batch fast path and the per-record validator), rollups and
lake folder. Code reads a kind's row instead of branching on the kind; a store's own piece of a
kind lives in that store's package, in a table keyed by kind (`COPY_PLANS` of the database,
`LAYOUTS` of the lake), and the synthetic feed's in `recorder.tools.produce.FEEDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import msgspec
    import numpy as np
    import pyarrow as pa

    from recorder.core.records import Limits, Row


class TopicKind(StrEnum):
    TICK = "tick"
    ORDERBOOK = "orderbook"


# A topic the sinks were not told of is written as ticks (as it always was; the pipeline only
# hands the sinks records of the topics it was configured with).
FALLBACK: Final = TopicKind.TICK


@dataclass(frozen=True, slots=True)
class DbColumn:
    """One column of a kind's database table, in the order the table (and the COPY) has them."""

    name: str  # the table's column
    source: str  # the batch column it is written from
    sql_type: str  # as the migration declares it (the COPY encoder is chosen by it)


@dataclass(frozen=True, slots=True)
class Kind:
    """Everything about one record kind that does not belong to one store."""

    topic_kind: TopicKind
    # A topic whose name contains one of these carries this kind (the longest match wins).
    name_hints: tuple[str, ...]
    table: str  # the database table (every database mode has the same name)
    db_columns: tuple[DbColumn, ...]  # the table's columns; the decoded row's fields, in order
    schema: pa.Schema  # the batch columns: `offset`, `time_ns`, then the kind's own
    # The OHLCV rollups kept of this kind (view -> bucket width, ns); empty: none.
    rollups: Mapping[str, int]
    lake_segment: str  # the folder under the lake prefix: {prefix}/{segment}/year=.../
    row_type: type[tuple[Any, ...]]  # what `decode` returns (a NamedTuple)
    wire: msgspec.json.Decoder[Any]  # the fast path: one batch parse of the values
    # The fast path's columns of parsed values: (table, indexes refused) or None (records decide).
    columns: Callable[[Sequence[Any], Sequence[int], np.ndarray], tuple[pa.Table, list[int]] | None]
    decode: Callable[[bytes | None, int, Limits], Row]  # one record (Kafka timestamp in ns)
    from_rows: Callable[[Sequence[int], Sequence[Any]], pa.Table]  # decoded rows -> batch columns

    @property
    def db_column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.db_columns)


@cache
def kind_table() -> Mapping[TopicKind, Kind]:
    """The kinds, in the order stores and tools go through them.

    Built at first use: the decoders and schemas it names live in `records` and `columns`,
    which import `TopicKind` from here."""
    from recorder.core import columns, records
    from recorder.core.rollups import ROLLUPS

    time = DbColumn("time", "time_ns", "timestamptz")
    symbol = DbColumn("symbol", "symbol", "text")
    kinds = {
        TopicKind.TICK: Kind(
            topic_kind=TopicKind.TICK,
            name_hints=("tick",),
            table="tick_data",
            db_columns=(
                time,
                symbol,
                DbColumn("price", "price", "double precision"),
                DbColumn("volume", "volume", "bigint"),
                DbColumn("change", "change", "double precision"),
                DbColumn("change_rate", "change_rate", "double precision"),
            ),
            schema=columns.TICK_SCHEMA,
            rollups=ROLLUPS,
            lake_segment="tick",
            row_type=records.TickRow,
            wire=records.TICK_DECODER,
            columns=columns.tick_columns,
            decode=records.decode_tick,
            from_rows=columns.ticks_from_rows,
        ),
        TopicKind.ORDERBOOK: Kind(
            topic_kind=TopicKind.ORDERBOOK,
            name_hints=("orderbook", "order_book", "order-book"),
            table="orderbook",
            db_columns=(
                time,
                symbol,
                # Levels as jsonb from their JSON text, never decoded again.
                DbColumn("bids", "bids", "jsonb"),
                DbColumn("asks", "asks", "jsonb"),
            ),
            schema=columns.BOOK_SCHEMA,
            rollups={},
            lake_segment="orderbook",
            row_type=records.OrderBookRow,
            wire=records.BOOK_DECODER,
            columns=columns.book_columns,
            decode=records.decode_orderbook,
            from_rows=columns.books_from_rows,
        ),
    }
    return MappingProxyType(kinds)


def kind_of(kind: TopicKind) -> Kind:
    return kind_table()[kind]


def all_kinds() -> list[Kind]:
    return list(kind_table().values())


def _choices(words: Sequence[str]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def split_topic(item: str) -> tuple[str, TopicKind]:
    name, sep, kind = item.partition(":")
    if sep:
        try:
            return name, TopicKind(kind)
        except ValueError:
            raise ValueError(f"topic {item!r}: kind must be {_choices(list(TopicKind))}") from None
    return name, topic_kind(name)


def topic_kind(item: str) -> TopicKind:
    name, sep, _ = item.partition(":")
    if sep:
        return split_topic(item)[1]
    lowered = name.lower()
    # The longest hint found in the name wins: `market.tick_orderbook` carries order books.
    found = [
        (len(hint), k.topic_kind) for k in all_kinds() for hint in k.name_hints if hint in lowered
    ]
    if found:
        return max(found, key=lambda hit: hit[0])[1]
    written = " / ".join(f"'{name}:{k}'" for k in TopicKind)
    raise ValueError(
        f"cannot tell what topic {name!r} carries: name it with {_choices(list(TopicKind))}, "
        f"or write {written}"
    )
