"""Parquet encoding of a kind's batch columns, and the lake's hive key layout (pure).

Owns the Parquet schemas of the original service (from `recorder.core.layouts.LAYOUTS`, per
kind its file's columns, shared with the Iceberg tables) and the object key of a file:
`{prefix}/{kind's lake segment}/year=YYYY/month=MM/day=DD/hour=HH/{topic}-p{P}-o{first offset of the flush range}.parquet`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.core.columns import event_times
from recorder.core.kinds import TopicKind, kind_of
from recorder.core.layouts import LAYOUTS as LAYOUTS
from recorder.core.layouts import LevelsLayout as LevelsLayout
from recorder.core.layouts import ParquetColumn as ParquetColumn
from recorder.core.layouts import Unit as Unit
from recorder.core.layouts import batch_columns as batch_columns

# Which columns Parquet dictionary-encodes: `all` (every column, as releases before the option
# wrote) or `symbol` (only the symbol: prices, sizes, offsets and times are nearly all distinct,
# so a dictionary on them is built, found too large and dropped, at the cost of most of the
# encode's CPU, and gives larger files). Recorded with each range (lake.encoder).
Dictionary = Literal["all", "symbol"]


def parquet_schema(kind: TopicKind, unit: Unit, levels: LevelsLayout) -> pa.Schema:
    batch = kind_of(kind).schema
    return pa.schema(
        [
            ("timestamp", pa.timestamp(unit, tz="UTC")),
            *((c.name, batch.field(c.source_for(levels)).type) for c in LAYOUTS[kind]),
        ]
    )


def parquet_table(kind: TopicKind, columns: pa.Table, unit: Unit, levels: LevelsLayout) -> pa.Table:
    """The Parquet table of a kind's batch columns: no row walked (order books' typed levels
    and their JSON text were both built at decode)."""
    return pa.Table.from_arrays(
        [
            event_times(columns, unit),
            *(columns.column(c.source_for(levels)) for c in LAYOUTS[kind]),
        ],
        schema=parquet_schema(kind, unit, levels),
    )


def write_parquet(
    sink: IO[bytes],
    kind: TopicKind,
    columns: pa.Table,
    unit: Unit,
    levels: LevelsLayout,
    row_group_size: int,
    dictionary: Dictionary = "symbol",
) -> int:
    """Encode the rows of `columns` into `sink`, `row_group_size` rows a row group, with the
    dictionary encoding the range's encoder names. The table is made contiguous first, so the
    bytes depend on the rows only, never on how the batch was chunked (DESIGN rule 4: every
    writer of a range puts the same bytes)."""
    table = parquet_table(kind, columns.combine_chunks(), unit, levels)
    encoded: bool | list[str] = True if dictionary == "all" else ["symbol"]
    with pq.ParquetWriter(
        sink, table.schema, compression="snappy", use_dictionary=encoded
    ) as writer:
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
        f"{kind_of(kind).lake_segment}/year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}/"
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
