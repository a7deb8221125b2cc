"""The lake's columns per record kind, shared by the Parquet lake and the Iceberg tables (pure).

Owns `LAYOUTS`: after the event time, each kind's file columns as the original service wrote
them, and the batch column each is written from (order books: typed levels or their JSON text).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from recorder.core.kinds import TopicKind

Unit = Literal["ns", "us"]
LevelsLayout = Literal["typed", "json"]


@dataclass(frozen=True, slots=True)
class ParquetColumn:
    """One column of a kind's files after `timestamp`: its name, and the batch column it is
    written from (its type is that column's)."""

    name: str
    source: str
    # With PARQUET_ORDERBOOK_LEVELS=json (the original layout): the batch column of its JSON text.
    json_source: str | None = None

    def source_for(self, levels: LevelsLayout) -> str:
        return self.json_source if levels == "json" and self.json_source else self.source


# Every file starts with `timestamp` (the event time, UTC, in PARQUET_TIMESTAMP_UNIT); then the
# kind's own columns, as the original service wrote them.
LAYOUTS: Final[Mapping[TopicKind, tuple[ParquetColumn, ...]]] = {
    TopicKind.TICK: tuple(
        ParquetColumn(name, name) for name in ("symbol", "price", "volume", "change", "change_rate")
    ),
    TopicKind.ORDERBOOK: (
        ParquetColumn("symbol", "symbol"),
        ParquetColumn("bids", "bid_levels", "bids"),
        ParquetColumn("asks", "ask_levels", "asks"),
    ),
}


def batch_columns(kind: TopicKind, levels: LevelsLayout) -> list[str]:
    """The batch columns a file of `kind` is made of (order books: one form of levels)."""
    return ["offset", "time_ns", *(c.source_for(levels) for c in LAYOUTS[kind])]
