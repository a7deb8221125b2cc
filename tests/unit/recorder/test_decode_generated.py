"""Generated batches over the whole message contract: the fast columnar path, the per-record
decoder and a reference written from DESIGN's rules alone agree on every field, bit for bit,
and on which records are rejected; nothing a batch holds makes decoding raise.

Batches mix every valid timestamp form (integer ns, RFC 3339 with any zone, absent -> the
Kafka timestamp), nulls and absent optional fields, integers for floats, edge values and
invalid records; Kafka timestamps run from -1 to 2^63-1.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.core.columns import (
    _fast,
    _level_numbers,
    _packed_level_numbers,
    _per_record,
    decode_batch,
)
from recorder.core.records import FUTURE_SLACK_NS, MIN_TIME_NS, Level, Limits
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.parquet import parquet_table
from recorder.sinks.timescale.encode import (
    HEADER,
    JSONB_VERSION,
    PG_EPOCH_US,
    TRAILER,
    copy_bytes,
    copy_chunks,
)

LIMITS = Limits(64 * 1024)
INT64_MAX = 2**63 - 1
NS = 1_000_000_000
# Kafka timestamps of ordinary records: 1990 .. 2200 (ms).
KAFKA_MS = st.integers(MIN_TIME_NS // 1_000_000, 7_258_118_400_000)
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Case:
    """One generated Kafka record: its value, Kafka timestamp and what the contract says."""

    value: bytes | None
    kafka_ms: int
    expected: tuple[Any, ...] | None  # the row DESIGN's rules give, None: must be rejected


# --- valid fields ---------------------------------------------------------------------------
symbols = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=32
)
positive = st.one_of(
    st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False, exclude_min=False),
    st.sampled_from([1e-8, 2.0**53, 1.7976931348623157e308]),
    st.integers(1, 2**53),  # an integer where a float is meant
)
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53))
volumes = st.one_of(st.integers(0, INT64_MAX), st.sampled_from([0, 2**53, INT64_MAX]))
levels = st.lists(
    st.fixed_dictionaries(
        {
            "price": positive,
            "quantity": st.one_of(st.just(0), st.floats(0, 1e12), st.integers(0, 10**6)),
        }
    ),
    max_size=6,
)


@st.composite
def timestamps(draw: st.DrawFn, kafka_ms: int) -> tuple[str, Any, int | None]:
    """(how, the JSON value or absent, the event time DESIGN gives or None: out of range)."""
    kafka_ns = kafka_ms * 1_000_000
    top = min(kafka_ns + FUTURE_SLACK_NS, INT64_MAX, 253_402_300_799 * NS)
    form = draw(st.sampled_from(["absent", "null", "int", "rfc3339", "bad_int", "bad_text"]))
    if form in ("absent", "null"):
        ok = MIN_TIME_NS <= kafka_ns <= INT64_MAX
        return form, None, kafka_ns if ok else None
    if form == "bad_int":
        value = draw(
            st.one_of(st.integers(-(2**63), MIN_TIME_NS - 1), st.integers(top + 1, 2**64 - 1))
        )
        return "int", value, None
    if form == "bad_text":
        return (
            "rfc3339",
            draw(
                st.sampled_from(
                    ["2025-11-26", "yesterday", "2025-13-01T00:00:00Z", "2025-11-26T05:00:00"]
                )
            ),
            None,
        )
    if top < MIN_TIME_NS:
        return "int", MIN_TIME_NS, None
    t = draw(st.integers(MIN_TIME_NS, top))
    if form == "int":
        return "int", t, t
    seconds, nanos = divmod(t, NS)
    digits = draw(st.integers(0, 9))
    kept = nanos - nanos % 10 ** (9 - digits)
    fraction = f".{kept // 10 ** (9 - digits):0{digits}d}" if digits else ""
    if not digits:
        kept = 0
    offset_min = draw(st.one_of(st.just(0), st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    local = datetime.fromtimestamp(seconds + offset_min * 60, UTC)
    if not 1 <= local.year <= 9999:
        return "int", t, t
    zone = (
        draw(st.sampled_from(["Z", "z", "+00:00"]))
        if offset_min == 0
        else f"{'+' if offset_min > 0 else '-'}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    )
    sep = draw(st.sampled_from(["T", "t", " "]))
    text = f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}{fraction}{zone}"
    return "rfc3339", text, seconds * NS + kept


def _optional(draw: st.DrawFn, record: dict[str, Any], name: str) -> float | None:
    how = draw(st.sampled_from(["absent", "null", "value"]))
    if how == "absent":
        return None
    value = draw(finite) if how == "value" else None
    record[name] = value
    return None if value is None else float(value)


INVALID_VALUES = st.one_of(
    st.binary(max_size=40),
    st.just(None),
    st.sampled_from([b"", b"[]", b"null", b"42", b'"x"', b"{", b"\xff\xfe", b"{}"]),
    st.just(b"x" * (LIMITS.max_message_bytes + 1)),
)


@st.composite
def ticks(draw: st.DrawFn, kafka_ms: st.SearchStrategy[int] = KAFKA_MS) -> Case:
    ms = draw(kafka_ms)
    record: dict[str, Any] = {
        "symbol": draw(symbols),
        "price": draw(positive),
        "volume": draw(volumes),
    }
    change = _optional(draw, record, "change")
    rate = _optional(draw, record, "change_rate")
    form, stamp, time_ns = draw(timestamps(ms))
    if form != "absent":
        record["timestamp"] = stamp
    if draw(st.booleans()):
        record["extra"] = {"ignored": [1, 2]}  # unknown fields are ignored
    row = (time_ns, record["symbol"], float(record["price"]), record["volume"], change, rate)
    value = msgspec.json.encode(record)
    if draw(st.integers(0, 9)) == 0:
        value = json.dumps(record, indent=1).encode()  # newlines between tokens
    return Case(value, ms, row if time_ns is not None else None)


@st.composite
def books(draw: st.DrawFn, kafka_ms: st.SearchStrategy[int] = KAFKA_MS) -> Case:
    ms = draw(kafka_ms)
    record: dict[str, Any] = {"symbol": draw(symbols), "bids": draw(levels), "asks": draw(levels)}
    form, stamp, time_ns = draw(timestamps(ms))
    if form != "absent":
        record["timestamp"] = stamp

    def typed(side: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(float(lv["price"]), float(lv["quantity"])) for lv in side]

    row = (time_ns, record["symbol"], typed(record["bids"]), typed(record["asks"]))
    return Case(msgspec.json.encode(record), ms, row if time_ns is not None else None)


@st.composite
def broken(draw: st.DrawFn, kind: TopicKind, nul: bool = True) -> Case:
    """A record that breaks one rule of the contract (`nul`: a NUL in the symbol among them)."""
    good = draw(ticks() if kind is TopicKind.TICK else books())
    if good.value is None or good.expected is None:
        return good
    record = msgspec.json.decode(good.value)
    rules = ["value", "symbol", "number", "missing", "type", "levels"] + (["nul"] if nul else [])
    how = draw(st.sampled_from(rules))
    if how == "value":
        return Case(draw(INVALID_VALUES), good.kafka_ms, None)
    if how == "symbol":
        record["symbol"] = draw(st.sampled_from(["", "x" * 33]))
    elif how == "nul":
        record["symbol"] = "a\x00b"
    elif how == "missing":
        del record["symbol"]
    elif how == "type":
        record["symbol"] = 7
    elif kind is TopicKind.TICK and how == "number":
        name = draw(st.sampled_from(["price", "volume", "huge"]))
        if name == "huge":  # a JSON number no double holds: not finite
            return Case(good.value.replace(b'"price":', b'"price":1e400,"p":'), good.kafka_ms, None)
        record[name] = draw(st.sampled_from([-1, 2**63, 1.5] if name == "volume" else [0, -1.0]))
    else:
        side = draw(st.sampled_from(["bids", "asks"]))
        field = "price" if draw(st.booleans()) else "quantity"
        bad = 0.0 if field == "price" else -1.0
        if kind is TopicKind.TICK:
            record["volume"] = -1
        else:
            record[side] = [*record[side], {"price": 1.0, "quantity": 1.0, field: bad}]
    return Case(msgspec.json.encode(record), good.kafka_ms, None)


def batches(kind: TopicKind, max_size: int = 40) -> st.SearchStrategy[list[Case]]:
    valid = ticks() if kind is TopicKind.TICK else books()
    return st.lists(st.one_of(valid, valid, valid, broken(kind)), min_size=1, max_size=max_size)


# --- comparison -------------------------------------------------------------------------------
def _bits(value: Any) -> Any:
    """A value as exact bits (floats by their IEEE pattern: -0.0 != 0.0)."""
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bits(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_bits(v) for v in value)
    return value


def table_bits(table: pa.Table) -> dict[str, list[Any]]:
    return {name: _bits(table.column(name).to_pylist()) for name in table.column_names}


def expected_rows(kind: TopicKind, table: pa.Table) -> list[tuple[Any, ...]]:
    cols = table.to_pydict()
    if kind is TopicKind.TICK:
        names = ("time_ns", "symbol", "price", "volume", "change", "change_rate")
        return [tuple(_bits(cols[n][i]) for n in names) for i in range(table.num_rows)]
    out = []
    for i in range(table.num_rows):
        sides = [
            [(lv["price"], lv["quantity"]) for lv in cols[n][i]]
            for n in ("bid_levels", "ask_levels")
        ]
        texts = [json.loads(cols[n][i]) for n in ("bids", "asks")]
        assert [[(float(lv["price"]), float(lv["quantity"])) for lv in t] for t in texts] == sides
        out.append(_bits((cols["time_ns"][i], cols["symbol"][i], *sides)))
    return out


def reference_copy(kind: TopicKind, table: pa.Table) -> bytes:
    """PostgreSQL's binary COPY layout written a row and a field at a time from the columns
    (the documented format, not the vectorised encoder): a field count, then per field its
    length (-1: NULL) and bytes; timestamptz as microseconds since 2000, floored."""
    out = [HEADER]
    for row in table.to_pylist():
        fields: list[bytes | None] = [
            struct.pack(">q", row["time_ns"] // 1000 - PG_EPOCH_US),
            row["symbol"].encode(),
        ]
        if kind is TopicKind.TICK:
            fields.append(struct.pack(">d", row["price"]))
            fields.append(struct.pack(">q", row["volume"]))
            for name in ("change", "change_rate"):
                fields.append(None if row[name] is None else struct.pack(">d", row[name]))
        else:
            for name in ("bids", "asks"):
                fields.append(bytes([JSONB_VERSION]) + row[name].encode())
        out.append(struct.pack(">h", len(fields)))
        for field in fields:
            out.append(struct.pack(">i", -1) if field is None else struct.pack(">i", len(field)))
            out.append(field or b"")
    out.append(TRAILER)
    return b"".join(out)


def check(kind: TopicKind, cases: list[Case], first_offset: int = 0) -> None:
    values = [c.value for c in cases]
    offsets = list(range(first_offset, first_offset + len(cases)))
    stamps = [c.kafka_ms for c in cases]
    fast, rejected = decode_batch(kind, values, offsets, stamps, LIMITS)
    slow, slow_rejected = _per_record(kind, values, offsets, stamps, LIMITS)
    # The two paths: the same rows, bit for bit, the same rejects with the same reasons.
    assert table_bits(fast) == table_bits(slow)
    # Decoded in slices of a few values (as a large fetch is), the outcome is the same.
    sliced, sliced_rejected = decode_batch(kind, values, offsets, stamps, LIMITS, slice_bytes=150)
    assert table_bits(sliced) == table_bits(fast)
    assert [(i, e.reason) for i, e in sliced_rejected] == [(i, e.reason) for i, e in rejected]
    assert [(i, e.reason) for i, e in rejected] == [(i, e.reason) for i, e in slow_rejected]
    assert fast.schema == slow.schema
    # The reference: DESIGN's rules, applied to what was generated.
    kept = [i for i, c in enumerate(cases) if c.expected is not None]
    assert fast.column("offset").to_pylist() == [offsets[i] for i in kept]
    assert [i for i, _ in rejected] == [i for i, c in enumerate(cases) if c.expected is None]
    assert expected_rows(kind, fast) == [_bits(cases[i].expected) for i in kept]
    # What the stores are sent is built from these columns: the same bytes from either path.
    # Encoded a few rows at a time (bounded transients), the stream is the same bytes.
    stream = b"".join(copy_chunks(fast, kind, 97))
    assert stream == copy_bytes(slow, kind)
    # And the vectorised stream is the documented layout, written a field at a time.
    assert stream == reference_copy(kind, slow)
    if fast.num_rows > 2:  # a slice of a table (its arrays start at an offset)
        middle = fast.slice(1, fast.num_rows - 2)
        assert b"".join(copy_chunks(middle, kind)) == reference_copy(kind, middle)
    assert copy_bytes(fast, kind) == copy_bytes(slow, kind)
    for layout in ("typed", "json"):
        assert parquet_table(kind, fast, "ns", layout).equals(
            parquet_table(kind, slow, "ns", layout)
        )


@PROFILE
@given(batches(TopicKind.TICK))
def test_generated_tick_batches_decode_exactly(cases: list[Case]) -> None:
    check(TopicKind.TICK, cases)


@PROFILE
@given(batches(TopicKind.ORDERBOOK))
def test_generated_order_book_batches_decode_exactly(cases: list[Case]) -> None:
    check(TopicKind.ORDERBOOK, cases)


@PROFILE
@given(st.lists(ticks(), min_size=1, max_size=40))
def test_all_valid_tick_batches_take_every_timestamp_form(cases: list[Case]) -> None:
    """Batches with no invalid record take the fast path whatever forms they mix."""
    check(TopicKind.TICK, cases)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_large_batches(data: st.DataObject) -> None:
    """Batch sizes up to 5,000: one generated record repeated with its timestamp form varied."""
    n = data.draw(st.integers(1, 5000))
    pattern = data.draw(st.lists(ticks(), min_size=1, max_size=8))
    check(TopicKind.TICK, [pattern[i % len(pattern)] for i in range(n)], first_offset=2**40)


@PROFILE
@given(st.sampled_from(list(TopicKind)), st.data())
def test_invalid_records_leave_their_neighbours_on_the_columnar_path(
    kind: TopicKind, data: st.DataObject
) -> None:
    """A poison flood puts bad records of every kind into nearly every fetch: a value that is
    not JSON, a tombstone, one too large, a wrong type or a level out of range is refused on
    its own, and the valid records beside it stay on the columnar path (only a NUL in a symbol
    sends a batch to the per-record path), with the same outcome as the records decide."""
    valid = ticks() if kind is TopicKind.TICK else books()
    cases = data.draw(
        st.lists(st.one_of(valid, valid, broken(kind, nul=False)), min_size=1, max_size=40)
    )
    check(kind, cases)
    values = [c.value for c in cases]
    offsets = list(range(len(cases)))
    fast = _fast(kind, values, offsets, [c.kafka_ms for c in cases], LIMITS)
    assert fast is not None
    table, refused = fast
    assert refused == [i for i, c in enumerate(cases) if c.expected is None]
    assert table.column("offset").to_pylist() == [i for i in offsets if i not in refused]


EDGE_KAFKA_MS = st.one_of(
    st.integers(-1, INT64_MAX), st.sampled_from([-1, 0, 1, INT64_MAX, 9_223_372_036_854, 2**62])
)


@PROFILE
@given(st.lists(st.one_of(ticks(EDGE_KAFKA_MS), ticks()), min_size=1, max_size=20))
def test_kafka_timestamps_from_minus_one_to_int64_max(cases: list[Case]) -> None:
    """A Kafka timestamp past year 2262 (ms sent where us were meant) or -1 (none) is a dead
    letter `timestamp_out_of_range` for a record that relies on it, never an overflow."""
    check(TopicKind.TICK, cases)
    _, rejected = decode_batch(
        TopicKind.TICK,
        [c.value for c in cases],
        list(range(len(cases))),
        [c.kafka_ms for c in cases],
        LIMITS,
    )
    for i, exc in rejected:
        value = cases[i].value
        if value is not None and b"timestamp" not in value and cases[i].expected is None:
            assert exc.reason == "timestamp_out_of_range"


def test_mixed_nanoseconds_and_absent_timestamps_keep_every_nanosecond() -> None:
    """The corruption this file was written for: int ns beside absent ones went through a
    float64 column and was rounded to 256 ns."""
    values = [
        b'{"symbol":"A","price":1.0,"volume":1,"timestamp":1796587197071827963}',
        b'{"symbol":"A","price":1.0,"volume":1}',
    ]
    table, rejected = decode_batch(TopicKind.TICK, values, [0, 1], [1796587197071] * 2, LIMITS)
    assert rejected == []
    assert table.column("time_ns").to_pylist() == [1796587197071827963, 1796587197071000000]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(TopicKind)),
    st.lists(
        st.tuples(
            st.one_of(
                st.none(),
                st.binary(max_size=64),
                st.recursive(
                    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                    lambda inner: (
                        st.lists(inner, max_size=3)
                        | st.dictionaries(
                            st.sampled_from(
                                [
                                    "symbol",
                                    "price",
                                    "volume",
                                    "timestamp",
                                    "bids",
                                    "asks",
                                    "change",
                                    "quantity",
                                ]
                            ),
                            inner,
                            max_size=6,
                        )
                    ),
                    max_leaves=12,
                ).map(lambda v: json.dumps(v).encode()),
            ),
            st.integers(-(2**63), INT64_MAX),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_decoding_never_raises(kind: TopicKind, records: list[tuple[bytes | None, int]]) -> None:
    """Random bytes and JSON: every record ends up either a row or a dead letter with a
    reason, exactly once, and the paths agree."""
    values = [v for v, _ in records]
    stamps = [t for _, t in records]
    offsets = list(range(len(records)))
    table, rejected = decode_batch(kind, values, offsets, stamps, LIMITS)
    kept = table.column("offset").to_pylist()
    assert sorted(kept + [i for i, _ in rejected]) == offsets
    assert all(exc.reason for _, exc in rejected)
    slow, _ = _per_record(kind, values, offsets, stamps, LIMITS)
    assert table_bits(table) == table_bits(slow)


any_level = st.builds(Level, st.floats(), st.floats())  # NaN, infinities, -0.0, subnormals


@PROFILE
@given(
    st.lists(st.lists(any_level, max_size=20), max_size=40),
    st.sampled_from([0, 1, 15, 16, 65_535, 65_536]),
)
def test_levels_read_from_their_messagepack_bytes_are_their_attributes(
    sides: list[list[Level]], more: int
) -> None:
    """The typed levels are read at fixed places of msgspec's MessagePack encoding of them:
    for any floats, and every size of MessagePack array header, the bits read are the bits of
    the levels' attributes, and that path is the one taken."""
    sides = [*sides, [Level(1.5, 2.5)] * more]
    flat = [level for side in sides for level in side]
    packed = _packed_level_numbers(flat)
    if not flat:
        assert packed is None
        return
    assert packed is not None
    for got, name in zip(packed, ("price", "quantity"), strict=True):
        want = np.array([getattr(level, name) for level in flat], np.float64)
        assert got.dtype == np.float64 and got.view(np.uint64).tolist() == (
            want.view(np.uint64).tolist()
        )
    prices, quantities = _level_numbers(sides, len(flat))
    assert prices.tobytes() == packed[0].tobytes()
    assert quantities.tobytes() == packed[1].tobytes()


def test_levels_not_holding_two_float64s_take_the_attribute_walk() -> None:
    """Levels built by hand with integers encode otherwise (an int 2**40 in the same 9 bytes
    as a float64): the layout check refuses them and their values are still exact."""
    for levels in ([Level(1, 2)], [Level(1.0, 2**40)], [Level(2**40, 1.0)] * 20):
        assert _packed_level_numbers(levels) is None
        prices, quantities = _level_numbers([levels], len(levels))
        assert prices.tolist() == [float(level.price) for level in levels]
        assert quantities.tolist() == [float(level.quantity) for level in levels]
