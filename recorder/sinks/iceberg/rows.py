"""The rows of the Iceberg tables from a batch's columns (pure).

Owns the tables' Arrow schemas: the lake's Parquet columns, with `timestamp` in microseconds
(Iceberg v2 has no nanosecond type, and pyiceberg writes no v3 table) and `timestamp_ns`, the
event time exactly as sent, beside it. `timestamp` is `timestamp_ns` floored to microseconds,
so the hour partition of a row is that of its exact time.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from recorder.core.columns import LEVEL_TYPE, event_times, file_columns
from recorder.core.kinds import TopicKind

Levels = Literal["typed", "json"]
PARTITION_SOURCE = "timestamp"
_TIMES = [
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("timestamp_ns", pa.int64(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
]


def schema(kind: TopicKind, levels: Levels) -> pa.Schema:
    if kind is TopicKind.TICK:
        return pa.schema(
            [
                *_TIMES,
                pa.field("price", pa.float64(), nullable=False),
                pa.field("volume", pa.int64(), nullable=False),
                pa.field("change", pa.float64()),
                pa.field("change_rate", pa.float64()),
            ]
        )
    level_type = LEVEL_TYPE if levels == "typed" else pa.string()
    return pa.schema(
        [
            *_TIMES,
            pa.field("bids", level_type, nullable=False),
            pa.field("asks", level_type, nullable=False),
        ]
    )


def rows(kind: TopicKind, columns: pa.Table, levels: Levels) -> pa.Table:
    """The table rows of one batch's `columns` (recorder.core.columns' schema)."""
    picked = columns.select(file_columns(kind, levels)).combine_chunks()
    rest = [picked.column(i) for i in range(3, picked.num_columns)]  # after offset, time, symbol
    return pa.Table.from_arrays(
        [
            event_times(picked, "us"),
            picked.column("time_ns"),
            picked.column("symbol"),
            *rest,
        ],
        schema=schema(kind, levels),
    )
