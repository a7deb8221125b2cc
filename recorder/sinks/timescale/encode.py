"""PostgreSQL binary COPY streams built from a flush's columns (pure, vectorised: numpy, Arrow).

Owns the wire layout of `COPY ... FROM STDIN (FORMAT binary)` of every kind's table: a field's
encoder is chosen by its column's SQL type (`FIELDS`), the columns are the kind's
(`recorder.core.kinds`); no Python tuple or `datetime` per row; every field is written for all
rows at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recorder.core.kinds import Kind, TopicKind, kind_of

# PGCOPY signature, flags (int32 0) and header extension length (int32 0).
HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"  # a field count of -1 ends the data
# timestamptz on the wire: int64 microseconds since 2000-01-01 00:00 UTC.
PG_EPOCH_US: Final = 946_684_800_000_000
JSONB_VERSION: Final = 1  # jsonb's binary form is a version byte and the JSON text


@dataclass(frozen=True, slots=True)
class _Fixed:
    """An 8-byte big-endian value per row; `present` False writes NULL."""

    values: np.ndarray  # already of a big-endian 8-byte dtype
    present: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _Text:
    """A variable-length value per row from an Arrow string array, optionally after a prefix
    byte (jsonb's version)."""

    values: pa.Array  # binary, no nulls
    lengths: np.ndarray
    prefix: int | None = None


def _text(array: pa.Array | pa.ChunkedArray, prefix: int | None = None) -> _Text:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    values = array.cast(pa.binary())  # the same buffers, typed as bytes
    offsets = np.frombuffer(values.buffers()[1], np.int32)[
        values.offset : values.offset + len(values) + 1
    ]
    return _Text(values, np.diff(offsets), prefix)


def _numbers(array: pa.Array | pa.ChunkedArray, dtype: str) -> _Fixed:
    present = None
    if array.null_count:
        present = array.is_valid().to_numpy(zero_copy_only=False)
        array = array.fill_null(0)
    return _Fixed(array.to_numpy().astype(dtype), present)


def encode(fields: list[_Fixed | _Text], n: int) -> bytes:
    """The binary COPY stream of `n` rows of `fields` (header, tuples, trailer)."""
    return HEADER + _tuples(fields, n) + TRAILER


_NULL: Final = pa.scalar(b"\xff\xff\xff\xff", pa.binary())  # a field length of -1: NULL


def _each_row(columns: list[np.ndarray], n: int) -> pa.Array:
    """One binary value a row: the columns' big-endian bytes side by side (a fixed width)."""
    row = np.empty(n, np.dtype([(f"c{i}", c.dtype) for i, c in enumerate(columns)]))
    for i, column in enumerate(columns):
        row[f"c{i}"] = column
    width = row.dtype.itemsize
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(row.view(np.uint8))]
    )


def _tuples(fields: list[_Fixed | _Text], n: int) -> bytes:
    """The tuples of `n` rows of `fields`, without the stream's header and trailer.

    Each row's bytes are cut in parts — runs of fixed-width bytes packed by numpy, each text
    as it is — and Arrow joins the parts row by row in one call: no Python object and no index
    per row or byte."""
    if not n:
        return b""
    parts: list[pa.Array] = []
    fixed: list[np.ndarray] = [np.full(n, len(fields), ">i2")]  # the field count
    for field in fields:
        if isinstance(field, _Fixed):
            sized = [np.full(n, 8, ">i4"), field.values]
            if field.present is None:
                fixed.extend(sized)
                continue
            if fixed:
                parts.append(_each_row(fixed, n))
            fixed = []
            parts.append(pc.if_else(pa.array(field.present), _each_row(sized, n), _NULL))
            continue
        extra = 0 if field.prefix is None else 1
        fixed.append((field.lengths + extra).astype(">i4"))
        if field.prefix is not None:
            fixed.append(np.full(n, field.prefix, np.uint8))
        parts.append(_each_row(fixed, n))
        parts.append(field.values)
        fixed = []
    if fixed:
        parts.append(_each_row(fixed, n))
    rows = pc.binary_join_element_wise(*parts, b"") if len(parts) > 1 else parts[0]
    _validity, offsets_buf, data_buf = rows.buffers()
    bounds = np.frombuffer(offsets_buf, np.int32)[[rows.offset, rows.offset + n]]
    return bytes(data_buf.slice(int(bounds[0]), int(bounds[1] - bounds[0])).to_pybytes())


def _times(column: pa.Array | pa.ChunkedArray) -> _Fixed:
    # Floor division, as timestamptz's own µs rounding of a datetime built from ns would do.
    micros = column.to_numpy() // 1000 - PG_EPOCH_US
    return _Fixed(micros.astype(">i8"))


Field = _Fixed | _Text
# A field's wire form by its column's SQL type (what the kinds' migrations declare).
FIELDS: Final[dict[str, Callable[[pa.Array | pa.ChunkedArray], Field]]] = {
    "timestamptz": _times,  # from ns since the epoch
    "text": _text,
    "double precision": lambda column: _numbers(column, ">f8"),
    "bigint": lambda column: _numbers(column, ">i8"),
    "jsonb": lambda column: _text(column, JSONB_VERSION),  # from the JSON text
}


def _fields_of(kind: Kind) -> Callable[[pa.Table], list[Field]]:
    """The encoder of one piece of a kind's rows: a field per table column, from its source."""
    encoders = [(c.source, FIELDS[c.sql_type]) for c in kind.db_columns]

    def fields(table: pa.Table) -> list[Field]:
        return [encode_field(table.column(source)) for source, encode_field in encoders]

    return fields


# The stream is built this many bytes of rows at a time (estimated from the columns' size):
# the encoder's transients (each row's fixed-width parts, the joined rows) are bounded by it, not
# by the flush, so a flush of deep order books costs its rows plus a few MiB (MAX_BUFFER_BYTES
# counts the rows).
COPY_CHUNK_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """How a write gathers one kind's rows before its COPY."""

    # One contiguous table (small fixed-size rows: cheaper to encode and to aggregate into
    # rollups); False for order books: a copy of every book of the flush (and past 2 GiB of
    # JSON text, more than a 32-bit-offset string array holds).
    contiguous: bool


# Every kind the database stores, in the order a write COPYs them (each write in one order; a
# kind's rollups are upserted after every COPY, last in the transaction).
COPY_PLANS: Final[dict[TopicKind, CopyPlan]] = {
    TopicKind.ORDERBOOK: CopyPlan(contiguous=False),
    TopicKind.TICK: CopyPlan(contiguous=True),
}


def copy_chunks(
    table: pa.Table, kind: TopicKind, chunk_bytes: int = COPY_CHUNK_BYTES
) -> Iterator[bytes]:
    """The binary COPY stream of `table`'s rows into `kind`'s table (its `db_columns`, in
    order) in pieces of about `chunk_bytes`: the header, the tuples a slice of rows at a time, the trailer. Only the
    columns the table stores are read, and only a slice at a time is made contiguous (a flush
    of many fetches may hold more text than one 32-bit-offset string array can, and a fetch's
    few rows are too few to encode alone: the per-call cost would dominate)."""
    spec = kind_of(kind)
    fields = _fields_of(spec)
    used = table.select([c.source for c in spec.db_columns])
    yield HEADER
    group: list[pa.RecordBatch] = []
    size = 0
    for piece in _pieces(used, chunk_bytes):
        group.append(piece)
        size += piece.get_total_buffer_size()
        if size >= chunk_bytes:
            yield _encoded(fields, group)
            group, size = [], 0
    if group:
        yield _encoded(fields, group)
    yield TRAILER


def _pieces(table: pa.Table, chunk_bytes: int) -> Iterator[pa.RecordBatch]:
    """The table's batches, a large one cut into slices of about `chunk_bytes`."""
    for batch in table.to_batches():
        rows = batch.num_rows
        if not rows:
            continue
        step = max(1, rows * chunk_bytes // max(1, batch.get_total_buffer_size()))
        for first in range(0, rows, step):
            yield batch.slice(first, step)


def _encoded(fields: Callable[[pa.Table], list[Field]], group: list[pa.RecordBatch]) -> bytes:
    piece = pa.Table.from_batches(group).combine_chunks() if len(group) > 1 else group[0]
    return _tuples(fields(piece), piece.num_rows)


def copy_bytes(table: pa.Table, kind: TopicKind) -> bytes:
    """The whole binary COPY stream of `table`'s rows into `kind`'s table, at once."""
    return b"".join(copy_chunks(table, kind))
