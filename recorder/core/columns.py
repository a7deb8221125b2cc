"""A fetched batch as column arrays, decoded and validated once for every sink (pure, no I/O).

Owns the columnar form of DESIGN's message contract: `decode_batch` turns one partition's
fetched values into an Arrow table (one row per valid record, with its Kafka offset) and the
rejected records with their exact reasons. The common all-valid batch takes one msgspec batch
decode and vectorised checks; a bad record (not JSON, a tombstone, a wrong type, a value out of
range) is taken out of the columns and named by the per-record decoder of
`recorder.core.records`, so its neighbours stay columnar. Only a batch the columns cannot hold
exactly (a NUL in a symbol, a Kafka timestamp outside int64 ns) is decoded a record at a time.

Over 400 lines: the fast path of every kind and its exact fall-backs must be read together to
see that they agree (the generated tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Final, Literal

import msgspec
import numpy as np
import pyarrow as pa

from recorder.core.kinds import TopicKind, kind_of
from recorder.core.records import (
    FUTURE_SLACK_NS,
    MAX_KAFKA_MS,
    MIN_KAFKA_MS,
    MIN_TIME_NS,
    Level,
    Limits,
    OrderBookRow,
    OrderBookWire,
    RecordError,
    Row,
    TickRow,
    TickWire,
    decode,
    parse_timestamp,
)

LEVEL_TYPE: Final = pa.list_(pa.struct([("price", pa.float64()), ("quantity", pa.float64())]))

# `offset` is the Kafka offset of the row; `time_ns` its event time (ns since the epoch).
TICK_SCHEMA: Final = pa.schema(
    [
        ("offset", pa.int64()),
        ("time_ns", pa.int64()),
        ("symbol", pa.string()),
        ("price", pa.float64()),
        ("volume", pa.int64()),
        ("change", pa.float64()),
        ("change_rate", pa.float64()),
    ]
)
# Levels twice: as their JSON text (JSONB, and the JSON Parquet layout) and typed (the typed
# Parquet layout), both built once here so no sink walks the levels again.
BOOK_SCHEMA: Final = pa.schema(
    [
        ("offset", pa.int64()),
        ("time_ns", pa.int64()),
        ("symbol", pa.string()),
        ("bids", pa.string()),
        ("asks", pa.string()),
        ("bid_levels", LEVEL_TYPE),
        ("ask_levels", LEVEL_TYPE),
    ]
)
NS_PER_MS: Final = 1_000_000
_INF: Final = np.inf
_NEWLINE: Final = 10
_LEVELS_ENCODER: Final = msgspec.json.Encoder()
_LEVELS_PACKER: Final = msgspec.msgpack.Encoder()
# A Level in MessagePack: 0x82 (map of 2), 0xa5 "price", 0xcb (float64) and its 8 bytes, 0xa8
# "quantity", 0xcb and its 8 bytes: 34 bytes, type bytes at 7 and 25.
_PACKED_LEVEL: Final = 34
_FLOAT64: Final = 0xCB

# Sinks buffer these tables; what they cost in memory, measured by `python bench/row_bytes.py`
# (process RSS growth): a buffered one-row table ~6.6 KB (each array's own allocations and
# wrappers: what every offered fetch adds whatever its size); ticks in 5,000-row tables 43-107 B
# a row against 58 B of Arrow buffers (allocator pools and padding); order books at most their
# Arrow bytes. Twice the Arrow bytes plus 6.4 KB a table is at or above all of these, so the
# estimate errs on the side of pausing early.
ARROW_RSS_FACTOR: Final = 2
TABLE_BYTES: Final = 6_400


def table_bytes(columns: pa.Table) -> int:
    """Estimated memory of a buffered table: its rows and the table's own allocations."""
    return ARROW_RSS_FACTOR * int(columns.nbytes) + TABLE_BYTES


Rejected = list[tuple[int, RecordError]]  # (index in the fetched batch, why)


def schema_of(kind: TopicKind) -> pa.Schema:
    return kind_of(kind).schema


def empty(kind: TopicKind) -> pa.Table:
    return schema_of(kind).empty_table()


# A fetch is decoded this many bytes of values at a time: the decoder's Python objects (a
# 1,000-level book is ~2,000 structs) exist for one slice only, not for a whole fetch.
DECODE_SLICE_BYTES: Final = 8 << 20


def decode_batch(
    kind: TopicKind,
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    kafka_ts_ms: Sequence[int],
    limits: Limits,
    slice_bytes: int = DECODE_SLICE_BYTES,
) -> tuple[pa.Table, Rejected]:
    """The valid records of one partition's fetch as columns, and the rejected ones.

    A function of the records alone (values and Kafka timestamps), like `records.decode`: the
    fast path accepts exactly what the per-record decoder accepts, and gives up on anything
    else, so a batch's outcome never depends on which path decided it (nor on the slices a
    large fetch is decoded in)."""
    if not values:
        return empty(kind), []
    bounds = _slices(values, slice_bytes)
    if len(bounds) == 1:
        return _decode_slice(kind, values, offsets, kafka_ts_ms, limits)
    tables: list[pa.Table] = []
    rejected: Rejected = []
    for first, stop in bounds:
        table, bad = _decode_slice(
            kind, values[first:stop], offsets[first:stop], kafka_ts_ms[first:stop], limits
        )
        tables.append(table)
        rejected.extend((first + i, exc) for i, exc in bad)
    return pa.concat_tables(tables), rejected


def value_bytes(values: Sequence[bytes | None]) -> int:
    """The bytes the values hold (a tombstone holds none)."""
    try:
        return sum(map(len, values))  # type: ignore[arg-type]  # counted at C speed
    except TypeError:
        return sum(len(v) for v in values if v is not None)


def _slices(values: Sequence[bytes | None], slice_bytes: int) -> list[tuple[int, int]]:
    """[first, stop) index ranges of about `slice_bytes` of values each (at least one value)."""
    try:
        if sum(map(len, values)) < slice_bytes:  # type: ignore[arg-type]
            return [(0, len(values))]  # the common fetch: one slice, counted at C speed
    except TypeError:
        pass  # a tombstone (None) among the values: counted one by one below
    out: list[tuple[int, int]] = []
    first, size = 0, 0
    for i, value in enumerate(values):
        size += len(value) if value is not None else 0
        if size >= slice_bytes:
            out.append((first, i + 1))
            first, size = i + 1, 0
    if first < len(values):
        out.append((first, len(values)))
    return out


def _decode_slice(
    kind: TopicKind,
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    kafka_ts_ms: Sequence[int],
    limits: Limits,
) -> tuple[pa.Table, Rejected]:
    try:
        fast = _fast(kind, values, offsets, kafka_ts_ms, limits)
    except Exception:  # whatever the batch path cannot handle, the records decide
        fast = None
    if fast is None:
        return _per_record(kind, values, offsets, kafka_ts_ms, limits)
    table, bad = fast
    # Rows the vectorised checks refused: the per-record decoder names each one's reason. It
    # must refuse every one of them, or the records decide the whole slice after all.
    rejected: Rejected = []
    for i in bad:
        try:
            decode(kind, values[i], kafka_ts_ms[i], limits)
        except RecordError as exc:
            rejected.append((i, exc))
            continue
        except Exception:
            pass
        return _per_record(kind, values, offsets, kafka_ts_ms, limits)
    return table, rejected


def _per_record(
    kind: TopicKind,
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    kafka_ts_ms: Sequence[int],
    limits: Limits,
) -> tuple[pa.Table, Rejected]:
    rows: list[Row] = []
    kept: list[int] = []
    rejected: Rejected = []
    for i, value in enumerate(values):
        try:
            rows.append(decode(kind, value, kafka_ts_ms[i], limits))
        except RecordError as exc:
            rejected.append((i, exc))
            continue
        except Exception as exc:  # a record must never stop its partition
            rejected.append((i, RecordError("undecodable", f"{type(exc).__name__}: {exc}")))
            continue
        kept.append(offsets[i])
    return from_rows(kind, kept, rows), rejected


def _lines(values: Sequence[bytes | None], limits: Limits) -> bytes | None:
    """The values as one newline-delimited blob, or None when a value needs the per-record
    path: absent, too large, or holding a newline itself (JSON allows one between tokens,
    and it would split the value into two lines)."""
    if None in values:
        return None
    present: Sequence[bytes] = values  # type: ignore[assignment]
    if max(map(len, present)) > limits.max_message_bytes:
        return None
    blob = b"\n".join(present)
    if blob.count(b"\n") != len(present) - 1:
        return None
    return blob


def _event_times(stamps: Sequence[object], kafka_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Event times in ns and which of them are in range. Integer ns and absent ones are taken
    as a column; a batch holding strings or out-of-range integers goes a row at a time
    (`_mixed_times`).

    Integers only, never through a float: numpy turns an int64 array with nulls into float64,
    which rounds nanoseconds to 256 ns, so the nulls are filled on the Arrow side first."""
    try:
        given = pa.array(stamps, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return _mixed_times(stamps, kafka_ns)  # RFC 3339 strings or out-of-range integers
    if given.null_count:
        absent = given.is_null().to_numpy(zero_copy_only=False)
        out = np.where(absent, kafka_ns, given.fill_null(0).to_numpy())
    else:
        out = given.to_numpy()
    out = np.asarray(out, dtype=np.int64)
    return out, (out >= MIN_TIME_NS) & (out <= kafka_ns + FUTURE_SLACK_NS)


def _mixed_times(stamps: Sequence[object], kafka_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Event times of a batch holding strings or out-of-range integers, a row at a time with
    the per-record rule (`parse_timestamp`); a row it refuses is marked not ok (the
    per-record decoder then names its reason)."""
    out = np.zeros(len(stamps), dtype=np.int64)
    ok = np.ones(len(stamps), dtype=np.bool_)
    for i, stamp in enumerate(stamps):
        if stamp is not None and not isinstance(stamp, int | str):
            ok[i] = False
            continue
        try:
            out[i] = parse_timestamp(stamp, int(kafka_ns[i]))
        except (RecordError, OverflowError, ValueError):
            ok[i] = False
    return out, ok


def _kafka_ns(kafka_ts_ms: Sequence[int]) -> np.ndarray | None:
    """Kafka timestamps in ns, or None when one cannot be (then the per-record path names
    the record): numpy would wrap an int64 overflow silently."""
    ms = np.asarray(kafka_ts_ms, dtype=np.int64)
    if not bool(np.all((ms >= MIN_KAFKA_MS) & (ms <= MAX_KAFKA_MS))):
        return None
    return ms * NS_PER_MS


def _finite_or_null(values: pa.Array) -> np.ndarray:
    """Per value: finite, or null."""
    if values.null_count:
        values = values.fill_null(0.0)
    return np.asarray(np.isfinite(values.to_numpy(zero_copy_only=False)), dtype=np.bool_)


def _fast(
    kind: TopicKind,
    values: Sequence[bytes | None],
    offsets: Sequence[int],
    kafka_ts_ms: Sequence[int],
    limits: Limits,
) -> tuple[pa.Table, list[int]] | None:
    """The valid rows and the indexes of the rows the columnar checks refused (sorted), or
    None when the batch needs the per-record path (a Kafka timestamp outside int64 ns, a NUL).

    A value that does not parse (not JSON, a wrong type, a tombstone, too large) is refused
    on its own, so a poison flood leaves its neighbours on the columnar path."""
    kafka_ns = _kafka_ns(kafka_ts_ms)
    if kafka_ns is None:
        return None
    wires, unparsed = _parse(kind, values, limits)
    if not unparsed:
        return _columns(kind, wires, offsets, kafka_ns)
    refused = set(unparsed)
    keep = [i for i in range(len(values)) if i not in refused]
    parsed = _columns(kind, [wires[i] for i in keep], [offsets[i] for i in keep], kafka_ns[keep])
    if parsed is None:
        return None
    table, bad = parsed
    return table, sorted([*unparsed, *(keep[j] for j in bad)])


def _parse(
    kind: TopicKind, values: Sequence[bytes | None], limits: Limits
) -> tuple[list[object], list[int]]:
    """The values parsed as the kind's wire form (one msgspec call for the whole batch), and
    the indexes of those that do not parse; those are None in the list. When the batch call
    fails, each value is parsed on its own to find which."""
    decoder = kind_of(kind).wire
    blob = _lines(values, limits)
    if blob is not None:
        try:
            wires: list[object] = list(decoder.decode_lines(blob))
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
        else:
            if len(wires) == len(values):  # an empty value is an empty line, which is skipped
                return wires, []
    wires, unparsed = [], []
    for i, value in enumerate(values):
        if value is None or len(value) > limits.max_message_bytes:
            wires.append(None)
            unparsed.append(i)
            continue
        try:
            wires.append(decoder.decode(value))
        except (msgspec.DecodeError, UnicodeDecodeError):
            wires.append(None)
            unparsed.append(i)
    return wires, unparsed


def _columns(
    kind: TopicKind, wires: Sequence[object], offsets: Sequence[int], kafka_ns: np.ndarray
) -> tuple[pa.Table, list[int]] | None:
    """Columns of parsed values, with the indexes of those the vectorised checks refused."""
    if not wires:
        return empty(kind), []
    return kind_of(kind).columns(wires, offsets, kafka_ns)


def _head(
    symbol: Sequence[str], stamps: Sequence[object], offsets: Sequence[int], kafka_ns: np.ndarray
) -> tuple[list[pa.Array], np.ndarray] | None:
    """The columns every kind starts with (offset, time_ns, symbol) and which rows' times are
    in range, or None when the batch needs the per-record path."""
    # PostgreSQL text cannot hold NUL (records.decode refuses it with a reason).
    if "\x00" in "".join(symbol):
        return None
    times, ok = _event_times(stamps, kafka_ns)
    return [pa.array(offsets, pa.int64()), pa.array(times), pa.array(symbol, pa.string())], ok


def tick_columns(
    wires: Sequence[object], offsets: Sequence[int], kafka_ns: np.ndarray
) -> tuple[pa.Table, list[int]] | None:
    """Tick columns (TICK_SCHEMA) of parsed ticks, and the indexes of those refused."""
    ticks: Sequence[TickWire] = wires  # type: ignore[assignment]  # the kind's wire type
    # A list per field: zip(*rows) would build a tuple a row and an iterator a row (5x slower).
    symbol = [w.symbol for w in ticks]
    price = [w.price for w in ticks]
    volume = [w.volume for w in ticks]
    change = [w.change for w in ticks]
    rate = [w.change_rate for w in ticks]
    stamps = [w.timestamp for w in ticks]
    started = _head(symbol, stamps, offsets, kafka_ns)
    if started is None:
        return None
    head, ok = started
    prices = pa.array(price, pa.float64())
    p = prices.to_numpy()
    changes = pa.array(change, pa.float64())
    rates = pa.array(rate, pa.float64())
    ok &= (p > 0) & (p < _INF) & _finite_or_null(changes) & _finite_or_null(rates)
    columns = [*head, prices, pa.array(volume, pa.int64()), changes, rates]
    table = pa.Table.from_arrays(columns, schema=TICK_SCHEMA)
    if bool(ok.all()):
        return table, []
    # A few bad ticks (a poison flood): the rest stays on the columnar path.
    return table.filter(pa.array(ok)), np.flatnonzero(~ok).tolist()


def book_columns(
    wires: Sequence[object], offsets: Sequence[int], kafka_ns: np.ndarray
) -> tuple[pa.Table, list[int]] | None:
    """Order book columns (BOOK_SCHEMA) of parsed books, and the indexes of those refused."""
    books: Sequence[OrderBookWire] = wires  # type: ignore[assignment]  # the kind's wire type
    symbol = [w.symbol for w in books]
    bids = [w.bids for w in books]
    asks = [w.asks for w in books]
    stamps = [w.timestamp for w in books]
    started = _head(symbol, stamps, offsets, kafka_ns)
    if started is None:
        return None
    head, ok = started
    typed_bids, bids_ok = _typed_checked(bids)
    typed_asks, asks_ok = _typed_checked(asks)
    ok &= bids_ok & asks_ok
    if bool(ok.all()):
        sides = [_json_texts(bids), _json_texts(asks), typed_bids, typed_asks]
        return pa.Table.from_arrays([*head, *sides], schema=BOOK_SCHEMA), []
    # Books with a refused level or time: the rest are built again without them.
    kept = np.flatnonzero(ok)
    kept_bids = [bids[i] for i in kept]
    kept_asks = [asks[i] for i in kept]
    sides = [
        _json_texts(kept_bids),
        _json_texts(kept_asks),
        _typed(kept_bids)[0],
        _typed(kept_asks)[0],
    ]
    head = [column.take(pa.array(kept)) for column in head]
    table = pa.Table.from_arrays([*head, *sides], schema=BOOK_SCHEMA)
    return table, np.flatnonzero(~ok).tolist()


def _typed(sides: Sequence[list[Level]]) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, sides), dtype=np.int32, count=len(sides))
    list_offsets = np.zeros(len(sides) + 1, dtype=np.int32)
    np.cumsum(lengths, out=list_offsets[1:])
    prices, quantities = _level_numbers(sides, int(list_offsets[-1]))
    values = pa.StructArray.from_arrays(
        [pa.array(prices), pa.array(quantities)], names=["price", "quantity"]
    )
    return (
        pa.ListArray.from_arrays(pa.array(list_offsets), values, type=LEVEL_TYPE),
        prices,
        quantities,
    )


def _level_numbers(sides: Sequence[list[Level]], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Every level's price and quantity, in order, as two float64 arrays."""
    flat = list(chain.from_iterable(sides))
    packed = _packed_level_numbers(flat)
    if packed is not None:
        return packed
    prices = np.fromiter((level.price for level in flat), np.float64, count)
    quantities = np.fromiter((level.quantity for level in flat), np.float64, count)
    return prices, quantities


def _packed_level_numbers(flat: list[Level]) -> tuple[np.ndarray, np.ndarray] | None:
    """The levels' prices and quantities read from one MessagePack encoding of them instead
    of an attribute fetch per level, or None when the encoding is not the expected layout.

    A level is a 2-entry map whose two floats msgspec writes as float64, so each level is the
    same 34 bytes with its price and quantity at fixed places. No level encodes longer, so the
    blob's length says every level is 34 bytes; the type bytes say both numbers are float64."""
    count = len(flat)
    if not count:
        return None
    blob = _LEVELS_PACKER.encode(flat)
    head = 1 if count < 16 else 3 if count < 1 << 16 else 5  # the array's header
    if len(blob) != head + _PACKED_LEVEL * count:
        return None
    rows = np.frombuffer(blob, np.uint8, _PACKED_LEVEL * count, head).reshape(count, -1)
    if not (bool(np.all(rows[:, 7] == _FLOAT64)) and bool(np.all(rows[:, 25] == _FLOAT64))):
        return None
    return _packed_floats(blob, head + 8, count), _packed_floats(blob, head + 26, count)


def _packed_floats(blob: bytes, first: int, count: int) -> np.ndarray:
    """`count` big-endian float64s `_PACKED_LEVEL` bytes apart from byte `first` of `blob`."""
    strided = np.ndarray((count,), ">f8", blob, first, (_PACKED_LEVEL,))
    return strided.astype(np.float64)


def _json_texts(sides: Sequence[list[Level]]) -> pa.Array:
    """Every side's levels as its JSON text, from one msgspec call: the newline-delimited
    output cut at its newlines (levels hold only numbers, so a newline only ends a line)."""
    blob = _LEVELS_ENCODER.encode_lines(sides)
    raw = np.frombuffer(blob, dtype=np.uint8)
    newlines = np.flatnonzero(raw == _NEWLINE)
    ends = newlines - np.arange(len(newlines))
    string_offsets = np.zeros(len(sides) + 1, dtype=np.int32)
    string_offsets[1:] = ends
    data = blob.replace(b"\n", b"")
    return pa.StringArray.from_buffers(len(sides), pa.py_buffer(string_offsets), pa.py_buffer(data))


def _typed_checked(sides: Sequence[list[Level]]) -> tuple[pa.Array, np.ndarray]:
    """The typed levels, and per book whether every level of this side is in range."""
    typed, prices, quantities = _typed(sides)
    level_ok = (prices > 0) & (prices < _INF) & (quantities >= 0) & (quantities < _INF)
    # Refused levels counted up to each book's first level: a book is ok when its own
    # levels add none.
    refused = np.zeros(len(level_ok) + 1, dtype=np.int64)
    np.cumsum(~level_ok, out=refused[1:])
    bounds = np.asarray(typed.offsets.to_numpy(), dtype=np.int64)
    return typed, refused[bounds[1:]] == refused[bounds[:-1]]


def from_rows(kind: TopicKind, offsets: Sequence[int], rows: Sequence[Row]) -> pa.Table:
    """Columns of already decoded rows (the per-record path; tests and tools build them too)."""
    if not rows:
        return empty(kind)
    return kind_of(kind).from_rows(offsets, rows)


def ticks_from_rows(offsets: Sequence[int], rows: Sequence[TickRow]) -> pa.Table:
    t, symbol, price, volume, change, rate = zip(*rows, strict=True)
    return pa.Table.from_arrays(
        [
            pa.array(offsets, pa.int64()),
            pa.array(t, pa.int64()),
            pa.array(symbol, pa.string()),
            pa.array(price, pa.float64()),
            pa.array(volume, pa.int64()),
            pa.array(change, pa.float64()),
            pa.array(rate, pa.float64()),
        ],
        schema=TICK_SCHEMA,
    )


def books_from_rows(offsets: Sequence[int], books: Sequence[OrderBookRow]) -> pa.Table:
    bids = [r.bids for r in books]
    asks = [r.asks for r in books]
    return pa.Table.from_arrays(
        [
            pa.array(offsets, pa.int64()),
            pa.array([r.time_ns for r in books], pa.int64()),
            pa.array([r.symbol for r in books], pa.string()),
            _json_texts(bids),
            _json_texts(asks),
            _typed(bids)[0],
            _typed(asks)[0],
        ],
        schema=BOOK_SCHEMA,
    )


def _int64s(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.num_chunks == 1:
        return np.asarray(column.chunk(0).to_numpy(), dtype=np.int64)
    return np.asarray(column.to_numpy(), dtype=np.int64)


def offsets_of(table: pa.Table) -> np.ndarray:
    """The Kafka offsets of the rows (zero-copy for a single-chunk table)."""
    return _int64s(table, "offset")


def times_of(table: pa.Table) -> np.ndarray:
    """The event times of the rows, ns since the epoch."""
    return _int64s(table, "time_ns")


def event_times(columns: pa.Table, unit: Literal["ns", "us"]) -> pa.Array:
    """The `time_ns` column as UTC timestamps of `unit`; microseconds are floored (event times
    are after 1990, so flooring is truncation), as every store that keeps microseconds does."""
    values = columns.column("time_ns").combine_chunks()
    if unit == "us":
        values = pa.array(values.to_numpy() // 1000)
    return values.view(pa.timestamp(unit, tz="UTC"))
