"""Parquet encoding of tick and order book rows, and the lake's hive key layout (pure).

Owns the Parquet schemas of the original service and the object key of a file:
`{prefix}/{tick|orderbook}/year=YYYY/month=MM/day=DD/hour=HH/{topic}-p{P}-o{first offset}.parquet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from recorder.core.records import OrderBookRow, TickRow, levels_json
from recorder.settings import TopicKind

LEVEL_TYPE = pa.list_(pa.struct([("price", pa.float64()), ("quantity", pa.float64())]))


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


def _timestamps(values: list[int], unit: Literal["ns", "us"]) -> pa.Array:
    if unit == "us":
        values = [v // 1000 for v in values]
    return pa.array(values, pa.int64()).view(pa.timestamp(unit, tz="UTC"))


def tick_table(rows: Sequence[TickRow], unit: Literal["ns", "us"]) -> pa.Table:
    columns: list[Sequence[object]] = (
        list(zip(*rows, strict=True)) if rows else [() for _ in range(6)]
    )
    return pa.Table.from_arrays(
        [
            _timestamps([int(v) for v in columns[0]], unit),  # type: ignore[call-overload]
            pa.array(columns[1], pa.string()),
            pa.array(columns[2], pa.float64()),
            pa.array(columns[3], pa.int64()),
            pa.array(columns[4], pa.float64()),
            pa.array(columns[5], pa.float64()),
        ],
        schema=tick_schema(unit),
    )


def _typed_levels(sides: Sequence[Sequence[object]]) -> pa.Array:
    offsets = [0]
    prices: list[float] = []
    quantities: list[float] = []
    for levels in sides:
        for level in levels:
            prices.append(level.price)  # type: ignore[attr-defined]
            quantities.append(level.quantity)  # type: ignore[attr-defined]
        offsets.append(len(prices))
    values = pa.StructArray.from_arrays(
        [pa.array(prices, pa.float64()), pa.array(quantities, pa.float64())],
        names=["price", "quantity"],
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, type=LEVEL_TYPE)


def orderbook_table(
    rows: Sequence[OrderBookRow], unit: Literal["ns", "us"], levels: Literal["typed", "json"]
) -> pa.Table:
    if levels == "typed":
        bids = _typed_levels([r.bids for r in rows])
        asks = _typed_levels([r.asks for r in rows])
    else:
        bids = pa.array([levels_json(r.bids).decode() for r in rows], pa.string())
        asks = pa.array([levels_json(r.asks).decode() for r in rows], pa.string())
    return pa.Table.from_arrays(
        [
            _timestamps([r.time_ns for r in rows], unit),
            pa.array([r.symbol for r in rows], pa.string()),
            bids,
            asks,
        ],
        schema=orderbook_schema(unit, levels),
    )


def write_parquet(
    sink: IO[bytes],
    kind: TopicKind,
    rows: Sequence[TickRow] | Sequence[OrderBookRow],
    unit: Literal["ns", "us"],
    levels: Literal["typed", "json"],
    row_group_size: int,
) -> int:
    """Encode rows into `sink` one row group at a time (never one table of the whole file)."""
    schema = tick_schema(unit) if kind is TopicKind.TICK else orderbook_schema(unit, levels)
    with pq.ParquetWriter(sink, schema, compression="snappy") as writer:
        for start in range(0, len(rows), row_group_size):
            chunk = rows[start : start + row_group_size]
            if kind is TopicKind.TICK:
                table = tick_table(chunk, unit)  # type: ignore[arg-type]
            else:
                table = orderbook_table(chunk, unit, levels)  # type: ignore[arg-type]
            writer.write_table(table, row_group_size=row_group_size)
    return len(rows)


def object_key(
    prefix: str, kind: TopicKind, hour_ns: int, topic: str, partition: int, first_offset: int
) -> str:
    """Hive-partitioned key of one file; the same inputs always give the same key."""
    hour = datetime.fromtimestamp(hour_ns // 1_000_000_000, tz=UTC)
    base = prefix.strip("/")
    path = (
        f"{kind.value}/year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}/"
        f"{topic}-p{partition}-o{first_offset:020d}.parquet"
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
