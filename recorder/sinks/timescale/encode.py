"""PostgreSQL binary COPY streams built from a flush's columns (pure, vectorised with numpy).

Owns the wire layout of `COPY ... FROM STDIN (FORMAT binary)` for `tick_data` and `orderbook`:
no Python tuple or `datetime` per row; every field is written for all rows at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

TICK_COLUMNS: Final = ("time", "symbol", "price", "volume", "change", "change_rate")
BOOK_COLUMNS: Final = ("time", "symbol", "bids", "asks")

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

    def sizes(self, n: int) -> np.ndarray:
        if self.present is None:
            return np.full(n, 12, np.int64)
        return np.where(self.present, 12, 4)


@dataclass(frozen=True, slots=True)
class _Text:
    """A variable-length value per row from an Arrow string array, optionally after a prefix
    byte (jsonb's version)."""

    data: np.ndarray  # the UTF-8 bytes of every row, back to back
    lengths: np.ndarray
    prefix: int | None = None

    def sizes(self, n: int) -> np.ndarray:
        return 4 + self.lengths + (0 if self.prefix is None else 1)


def _text(array: pa.Array, prefix: int | None = None) -> _Text:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    _validity, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[array.offset : array.offset + len(array) + 1]
    data = (
        np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]]
        if data_buf
        else (np.empty(0, np.uint8))
    )
    return _Text(data, np.diff(offsets).astype(np.int64), prefix)


def _numbers(array: pa.Array | pa.ChunkedArray, dtype: str) -> _Fixed:
    present = None
    if array.null_count:
        present = array.is_valid().to_numpy(zero_copy_only=False)
        array = array.fill_null(0)
    return _Fixed(array.to_numpy().astype(dtype), present)


def _put(out: np.ndarray, at: np.ndarray, values: np.ndarray, width: int) -> None:
    """Write `width` bytes of each row's value at each row's position."""
    if len(at):
        out[at[:, None] + np.arange(width)] = values.view(np.uint8).reshape(-1, width)


def encode(fields: list[_Fixed | _Text], n: int) -> bytes:
    """The binary COPY stream of `n` rows of `fields` (header, tuples, trailer)."""
    return HEADER + _tuples(fields, n) + TRAILER


def _tuples(fields: list[_Fixed | _Text], n: int) -> bytes:
    """The tuples of `n` rows of `fields`, without the stream's header and trailer."""
    sizes = [f.sizes(n) for f in fields]
    row_sizes = 2 + np.sum(sizes, axis=0) if n else np.zeros(0, np.int64)
    starts = np.zeros(n, np.int64)
    if n:
        np.cumsum(row_sizes[:-1], out=starts[1:])
    total = int(row_sizes.sum())
    out = np.empty(total, np.uint8)
    _put(out, starts, np.full(n, len(fields), ">i2"), 2)
    at = starts + 2
    for field, size in zip(fields, sizes, strict=True):
        if isinstance(field, _Fixed):
            lengths = np.full(n, 8, ">i4")
            if field.present is not None:
                lengths[~field.present] = -1
            _put(out, at, lengths, 4)
            rows = at + 4 if field.present is None else (at + 4)[field.present]
            values = field.values if field.present is None else field.values[field.present]
            _put(out, rows, values, 8)
        else:
            extra = 0 if field.prefix is None else 1
            _put(out, at, (field.lengths + extra).astype(">i4"), 4)
            if field.prefix is not None:
                out[at + 4] = field.prefix
            if len(field.data):
                # Byte j of row i goes to at[i] + 4 + extra + (j - first byte of row i).
                row_starts = np.zeros(n, np.int64)
                np.cumsum(field.lengths[:-1], out=row_starts[1:])
                shift = np.repeat(at + 4 + extra - row_starts, field.lengths)
                out[np.arange(len(field.data)) + shift] = field.data
        at = at + size
    return out.tobytes()


def _times(table: pa.Table) -> _Fixed:
    # Floor division, as timestamptz's own µs rounding of a datetime built from ns would do.
    micros = table.column("time_ns").to_numpy() // 1000 - PG_EPOCH_US
    return _Fixed(micros.astype(">i8"))


def _tick_fields(table: pa.Table) -> list[_Fixed | _Text]:
    return [
        _times(table),
        _text(table.column("symbol")),
        _numbers(table.column("price"), ">f8"),
        _numbers(table.column("volume"), ">i8"),
        _numbers(table.column("change"), ">f8"),
        _numbers(table.column("change_rate"), ">f8"),
    ]


def _book_fields(table: pa.Table) -> list[_Fixed | _Text]:
    # Levels as jsonb from their JSON text, never decoded again.
    return [
        _times(table),
        _text(table.column("symbol")),
        _text(table.column("bids"), JSONB_VERSION),
        _text(table.column("asks"), JSONB_VERSION),
    ]


# The stream is built this many bytes of rows at a time (estimated from the columns' size):
# the encoder's transients (row positions, a byte index per text byte) are bounded by it, not
# by the flush, so a flush of deep order books costs its rows plus a few MiB (MAX_BUFFER_BYTES
# counts the rows).
COPY_CHUNK_BYTES: Final = 1 << 20
COPY_COLUMNS: Final = {
    "tick": ("time_ns", "symbol", "price", "volume", "change", "change_rate"),
    "book": ("time_ns", "symbol", "bids", "asks"),
}


def copy_chunks(table: pa.Table, kind: str, chunk_bytes: int = COPY_CHUNK_BYTES) -> Iterator[bytes]:
    """The binary COPY stream of `table`'s rows (`kind` "tick" or "book") in pieces of about
    `chunk_bytes`: the header, the tuples a slice of rows at a time, the trailer. Only the
    columns the table stores are read, and only a slice at a time is made contiguous (a flush
    of many fetches may hold more text than one 32-bit-offset string array can, and a fetch's
    few rows are too few to encode alone: the per-call cost would dominate)."""
    fields = _tick_fields if kind == "tick" else _book_fields
    used = table.select(list(COPY_COLUMNS[kind]))
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


def _encoded(
    fields: Callable[[pa.Table], list[_Fixed | _Text]], group: list[pa.RecordBatch]
) -> bytes:
    piece = pa.Table.from_batches(group).combine_chunks() if len(group) > 1 else group[0]
    return _tuples(fields(piece), piece.num_rows)


def tick_copy(table: pa.Table) -> bytes:
    """`tick_data` rows (TICK_COLUMNS) from tick columns (recorder.core.columns.TICK_SCHEMA)."""
    return b"".join(copy_chunks(table, "tick"))


def book_copy(table: pa.Table) -> bytes:
    """`orderbook` rows (BOOK_COLUMNS) from order book columns."""
    return b"".join(copy_chunks(table, "book"))
