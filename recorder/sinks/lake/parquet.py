"""Parquet encoding of tick and order book columns, and the lake's hive key layout (pure).

Owns the Parquet schemas of the original service and the object key of a file:
`{prefix}/{tick|orderbook}/year=YYYY/month=MM/day=DD/hour=HH/{topic}-p{P}-o{first offset of the flush range}.parquet`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.core.columns import LEVEL_TYPE, event_times
from recorder.runtime.settings import TopicKind


def tick_schema(unit: Literal["ns", "us"]) -> pa.Schema:
    return pa.schema(
        [
            ("timestamp", pa.timestamp(unit, tz="UTC")),
            ("symbol", pa.string()),
            ("price", pa.float64()),
            ("volume", pa.int64()),
            ("change", pa.float64()),
            ("change_rate", pa.float64()),
        ]
    )


def orderbook_schema(unit: Literal["ns", "us"], levels: Literal["typed", "json"]) -> pa.Schema:
    level_type = LEVEL_TYPE if levels == "typed" else pa.string()
    return pa.schema(
        [
            ("timestamp", pa.timestamp(unit, tz="UTC")),
            ("symbol", pa.string()),
            ("bids", level_type),
            ("asks", level_type),
        ]
    )


def tick_table(columns: pa.Table, unit: Literal["ns", "us"]) -> pa.Table:
    """The Parquet table of tick columns (recorder.core.columns.TICK_SCHEMA): no row walked."""
    return pa.Table.from_arrays(
        [
            event_times(columns, unit),
            *(
                columns.column(name)
                for name in ("symbol", "price", "volume", "change", "change_rate")
            ),
        ],
        schema=tick_schema(unit),
    )


def orderbook_table(
    columns: pa.Table, unit: Literal["ns", "us"], levels: Literal["typed", "json"]
) -> pa.Table:
    """The Parquet table of order book columns: typed levels or their JSON text, both built
    at decode."""
    sides = ("bid_levels", "ask_levels") if levels == "typed" else ("bids", "asks")
    return pa.Table.from_arrays(
        [
            event_times(columns, unit),
            columns.column("symbol"),
            columns.column(sides[0]),
            columns.column(sides[1]),
        ],
        schema=orderbook_schema(unit, levels),
    )


def write_parquet(
    sink: IO[bytes],
    kind: TopicKind,
    columns: pa.Table,
    unit: Literal["ns", "us"],
    levels: Literal["typed", "json"],
    row_group_size: int,
) -> int:
    """Encode the rows of `columns` into `sink`, `row_group_size` rows a row group. The table
    is made contiguous first, so the bytes depend on the rows only, never on how the batch
    was chunked (DESIGN rule 4: every writer of a range puts the same bytes)."""
    contiguous = columns.combine_chunks()
    if kind is TopicKind.TICK:
        table = tick_table(contiguous, unit)
        schema = tick_schema(unit)
    else:
        table = orderbook_table(contiguous, unit, levels)
        schema = orderbook_schema(unit, levels)
    with pq.ParquetWriter(sink, schema, compression="snappy") as writer:
        writer.write_table(table, row_group_size=row_group_size)
    return int(table.num_rows)


def object_key(
    prefix: str,
    kind: TopicKind,
    hour_ns: int,
    topic: str,
    partition: int,
    first_offset: int,
    incarnation: str | None = None,
) -> str:
    """Hive-partitioned key of one file; the same inputs always give the same key. The
    `incarnation` (a prefix of the topic ID) keeps the files of a recreated topic's new log
    beside the old log's, whose offsets it reuses, instead of replacing them."""
    hour = datetime.fromtimestamp(hour_ns // 1_000_000_000, tz=UTC)
    base = prefix.strip("/")
    tag = f"-i{incarnation}" if incarnation else ""
    path = (
        f"{kind.value}/year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}/"
        f"{topic}-p{partition}-o{first_offset:020d}{tag}.parquet"
    )
    return f"{base}/{path}" if base else path


def _under(prefix: str, path: str) -> str:
    base = prefix.strip("/")
    return f"{base}/{path}" if base else path


def groups_root(prefix: str) -> str:
    """The folder holding one sub-folder of progress objects per consumer group."""
    return _under(prefix, "_recorder/groups/")


def progress_key(prefix: str, group: str, topic: str, partition: int) -> str:
    """Where a consumer group's cold path records its progress for a partition (scoped by group,
    so two deployments on one bucket never fence or overwrite each other; hive readers skip
    `_`-prefixed folders)."""
    return _under(prefix, f"_recorder/groups/{group}/progress/{topic}/{partition}.json")


def legacy_progress_key(prefix: str, topic: str, partition: int) -> str:
    """The key releases before group scoping used; read once to carry progress over."""
    return _under(prefix, f"_recorder/progress/{topic}/{partition}.json")


def scratch_prefix(prefix: str, group: str) -> str:
    """Where the start-up check of conditional writes puts (and deletes) its probe object."""
    return _under(prefix, f"_recorder/groups/{group}/probe/")
