"""The message contract of DESIGN.md, rule by rule."""

from __future__ import annotations

import time

import pytest

from recorder.core.records import (
    MIN_TIME_NS,
    Level,
    Limits,
    OrderBookRow,
    RecordError,
    TickRow,
    decode,
    parse_timestamp,
)
from recorder.runtime.settings import TopicKind

NOW = time.time_ns()
TS = 1764133200123456789
LIMITS = Limits(1024)


def tick(value: bytes, kafka_ms: int = 1764133200000) -> TickRow:
    row = decode(TopicKind.TICK, value, kafka_ms, LIMITS)
    assert isinstance(row, TickRow)
    return row


def reason(kind: TopicKind, value: bytes | None) -> str:
    with pytest.raises(RecordError) as info:
        decode(kind, value, 1764133200000, LIMITS)
    assert str(info.value)  # every rejection has a readable message
    return info.value.reason


def test_design_example_tick() -> None:
    row = tick(
        b'{"symbol":"005930","price":71000.0,"volume":120,"change":500.0,"change_rate":0.71,'
        b'"timestamp":1764133200123456789}'
    )
    assert row == TickRow(TS, "005930", 71000.0, 120, 500.0, 0.71)


def test_design_example_orderbook() -> None:
    value = (
        b'{"symbol":"005930","timestamp":1764133200123456789,'
        b'"bids":[{"price":70900.0,"quantity":1200}],"asks":[{"price":71000.0,"quantity":800}]}'
    )
    row = decode(TopicKind.ORDERBOOK, value, 1764133200000, LIMITS)
    assert isinstance(row, OrderBookRow)
    assert row.time_ns == TS and row.symbol == "005930"
    assert row.bids == [Level(70900.0, 1200.0)] and row.asks == [Level(71000.0, 800.0)]


def test_optional_fields_absent_or_null_and_extra_fields_ignored() -> None:
    row = tick(b'{"symbol":"A","price":1,"volume":0,"change":null,"extra":[1,{"x":2}]}')
    assert row.change is None and row.change_rate is None
    assert row.time_ns == 1764133200000 * 1_000_000  # absent timestamp -> Kafka record time


def test_rfc3339_timestamps_keep_nanoseconds() -> None:
    assert parse_timestamp("2025-11-26T05:00:00.123456789Z", NOW) == 1764133200123456789
    assert parse_timestamp("2025-11-26T14:00:00.5+09:00", NOW) == 1764133200500000000
    with pytest.raises(RecordError):
        parse_timestamp("2025-11-26T05:00:00", NOW)  # no zone


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\xff\xfe\x00", "not_utf8"),
        (b"[1,2]", "not_object"),
        (b'"text"', "not_object"),
        (b"{not json", "malformed_json"),
        (b'{"symbol":"A","volume":1}', "missing_field"),
        (b'{"symbol":"","price":1,"volume":1}', "invalid_field"),
        (b'{"symbol":"' + b"x" * 33 + b'","price":1,"volume":1}', "invalid_field"),
        (b'{"symbol":5,"price":1,"volume":1}', "invalid_field"),
        (b'{"symbol":"A","price":"1","volume":1}', "invalid_field"),
        (b'{"symbol":"A","price":true,"volume":1}', "invalid_field"),
        (b'{"symbol":"A","price":1,"volume":1.5}', "invalid_field"),
        (b'{"symbol":"A","price":1,"volume":-1}', "invalid_field"),
        (b'{"symbol":"A","price":0,"volume":1}', "out_of_range"),
        (b'{"symbol":"A","price":NaN,"volume":1}', "malformed_json"),
        (b'{"symbol":"A","price":Infinity,"volume":1}', "malformed_json"),
        (b'{"symbol":"A","price":1e999,"volume":1}', "invalid_field"),
        (b'{"symbol":"A","price":1,"volume":1,"change":1e999}', "invalid_field"),
        (b'{"symbol":"A","price":1,"volume":1,"timestamp":1764133200}', "timestamp_out_of_range"),
        (
            b'{"symbol":"A","price":1,"volume":1,"timestamp":1764133200123}',
            "timestamp_out_of_range",
        ),
        (b'{"symbol":"A","price":1,"volume":1,"timestamp":"yesterday"}', "bad_timestamp"),
        (
            b'{"symbol":"A","price":1,"volume":1,"timestamp":9999999999999999999}',
            "timestamp_out_of_range",
        ),
        (b'{"symbol":"A\\u0000B","price":1,"volume":1}', "invalid_field"),
        (None, "empty"),
        (b'{"symbol":"A","price":1,"volume":1,"pad":"' + b"x" * 2000 + b'"}', "too_large"),
    ],
)
def test_tick_rejections(value: bytes | None, expected: str) -> None:
    assert reason(TopicKind.TICK, value) == expected


def test_future_timestamp_limit_is_24_hours() -> None:
    ahead = NOW + 23 * 3600 * 10**9
    assert parse_timestamp(ahead, NOW) == ahead
    with pytest.raises(RecordError):
        parse_timestamp(NOW + 25 * 3600 * 10**9, NOW)
    with pytest.raises(RecordError):
        parse_timestamp(MIN_TIME_NS - 1, NOW)


def test_future_bound_is_measured_from_the_kafka_timestamp_not_the_clock() -> None:
    """A record stamped 24 h + 1 s after its Kafka timestamp is rejected whenever it is
    decoded, and one 1 s inside the bound is kept however late it is replayed."""
    kafka_ms = 1764133200000  # a year before NOW-ish: a replay long after the append
    bound = kafka_ms * 1_000_000 + 24 * 3600 * 10**9
    late = f'{{"symbol":"A","price":1,"volume":1,"timestamp":{bound + 10**9}}}'.encode()
    inside = f'{{"symbol":"A","price":1,"volume":1,"timestamp":{bound - 10**9}}}'.encode()
    with pytest.raises(RecordError) as info:
        decode(TopicKind.TICK, late, kafka_ms, LIMITS)
    assert info.value.reason == "timestamp_out_of_range"
    assert tick(inside, kafka_ms).time_ns == bound - 10**9


@pytest.mark.parametrize(
    "value",
    [
        b'{"symbol":"A","bids":[{"price":0,"quantity":1}],"asks":[]}',
        b'{"symbol":"A","bids":[],"asks":[{"price":1,"quantity":-1}]}',
        b'{"symbol":"A","bids":[{"price":1}],"asks":[]}',
        b'{"symbol":"A","bids":{},"asks":[]}',
        b'{"symbol":"A","asks":[]}',
        b'{"symbol":"A","bids":[],"asks":['
        + b",".join([b'{"price":1,"quantity":1}'] * 1001)
        + b"]}",
    ],
)
def test_orderbook_rejections(value: bytes) -> None:
    with pytest.raises(RecordError):
        decode(TopicKind.ORDERBOOK, value, 1764133200000, Limits(1 << 20))


def test_empty_sides_and_1000_levels_are_valid() -> None:
    levels = b",".join([b'{"price":1,"quantity":0}'] * 1000)
    value = b'{"symbol":"A","bids":[],"asks":[' + levels + b"]}"
    row = decode(TopicKind.ORDERBOOK, value, 1764133200000, Limits(1 << 20))
    assert isinstance(row, OrderBookRow) and row.bids == [] and len(row.asks) == 1000


def test_unicode_symbol_counts_characters() -> None:
    row = tick(('{"symbol":"' + "삼" * 32 + '","price":1,"volume":1}').encode())
    assert row.symbol == "삼" * 32
