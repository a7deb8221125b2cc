"""The rows of the Iceberg tables from a batch's columns (pure).

Owns the tables' Arrow schemas: the lake's Parquet columns (`recorder.core.layouts.LAYOUTS`),
with `timestamp` in microseconds (Iceberg v2 has no nanosecond type, and pyiceberg writes no v3
table) and `timestamp_ns`, the event time exactly as sent, beside it. `timestamp` is
`timestamp_ns` floored to microseconds, so the hour partition of a row is that of its exact time.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from recorder.core.columns import event_times
from recorder.core.kinds import TopicKind, kind_of
from recorder.core.layouts import LAYOUTS, LevelsLayout

Levels = LevelsLayout
PARTITION_SOURCE = "timestamp"
# The message contract's optional fields (absent or null: stored as NULL); every other column
# is NOT NULL for readers.
OPTIONAL: Final = frozenset({"change", "change_rate"})
_TIMES = [
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("timestamp_ns", pa.int64(), nullable=False),
]


def schema(kind: TopicKind, levels: Levels) -> pa.Schema:
    batch = kind_of(kind).schema
    return pa.schema(
        [
            *_TIMES,
            *(
                pa.field(c.name, batch.field(c.source_for(levels)).type, c.name in OPTIONAL)
                for c in LAYOUTS[kind]
            ),
        ]
    )


def rows(kind: TopicKind, columns: pa.Table, levels: Levels) -> pa.Table:
    """The table rows of one batch's `columns` (recorder.core.columns' schema)."""
    contiguous = columns.combine_chunks()
    return pa.Table.from_arrays(
        [
            event_times(contiguous, "us"),
            contiguous.column("time_ns"),
            *(contiguous.column(c.source_for(levels)) for c in LAYOUTS[kind]),
        ],
        schema=schema(kind, levels),
    )
