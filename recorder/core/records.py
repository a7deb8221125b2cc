"""Decoding and validation of Kafka record values into typed rows (pure, no I/O).

Owns the message contract of DESIGN.md: what a tick and an order book are, which values are
rejected and with what readable reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final, NamedTuple

import msgspec

from recorder.core.kinds import TopicKind, kind_of

NS_PER_SECOND: Final = 1_000_000_000
MIN_TIME_NS: Final = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp()) * NS_PER_SECOND
FUTURE_SLACK_NS: Final = 24 * 3600 * NS_PER_SECOND
MAX_LEVELS: Final = 1000
INT64_MAX: Final = 2**63 - 1
# Kafka timestamps (ms) whose ns form fits a signed 64-bit integer with the 24 h slack added;
# outside them (-1 "no timestamp", ms sent where us were meant) a record that relies on its
# Kafka timestamp is refused with `timestamp_out_of_range`, never an overflow.
MIN_KAFKA_MS: Final = 0
MAX_KAFKA_MS: Final = (INT64_MAX - FUTURE_SLACK_NS) // 1_000_000

Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class TickWire(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    symbol: Symbol
    price: float
    volume: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    change: float | None = None
    change_rate: float | None = None
    timestamp: int | str | None = None


class Level(msgspec.Struct, array_like=False, gc=False):
    price: float
    quantity: float


Levels = Annotated[list[Level], msgspec.Meta(max_length=MAX_LEVELS)]


class OrderBookWire(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    symbol: Symbol
    bids: Levels
    asks: Levels
    timestamp: int | str | None = None


class TickRow(NamedTuple):
    time_ns: int
    symbol: str
    price: float
    volume: int
    change: float | None
    change_rate: float | None


class OrderBookRow(NamedTuple):
    time_ns: int
    symbol: str
    bids: list[Level]
    asks: list[Level]


Row = TickRow | OrderBookRow


class RecordError(ValueError):
    """A record breaks the message contract; `reason` is a short machine label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 1_048_576


TICK_DECODER: Final = msgspec.json.Decoder(TickWire)
BOOK_DECODER: Final = msgspec.json.Decoder(OrderBookWire)
_RFC3339: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(value: int | str | None, kafka_ts_ns: int) -> int:
    """Event time in ns since the epoch: int ns, RFC 3339 string with a zone, or (absent) the
    Kafka record's timestamp. The upper bound is measured from that Kafka timestamp, never
    from the recorder's clock: a replay must decide exactly as the first attempt did, or one
    store keeps a record that the other dead-lettered (DESIGN: decisions independent of the
    clock)."""
    if value is None:
        time_ns = kafka_ts_ns
    elif isinstance(value, int):
        time_ns = value
    else:
        match = _RFC3339.match(value)
        if match is None:
            raise RecordError(
                "bad_timestamp",
                f"timestamp {value[:64]!r} is not an RFC 3339 date-time with a zone "
                "(e.g. 2025-11-26T05:00:00.123456789Z) nor integer nanoseconds",
            )
        date, clock, fraction, zone = match.groups()
        zone = "+00:00" if zone in ("Z", "z") else zone
        try:
            whole = datetime.fromisoformat(f"{date}T{clock}{zone}")
        except ValueError as exc:
            raise RecordError("bad_timestamp", f"timestamp {value[:64]!r}: {exc}") from None
        nanos = int((fraction or "0").ljust(9, "0"))
        time_ns = int(whole.timestamp()) * NS_PER_SECOND + nanos
    if time_ns < MIN_TIME_NS or time_ns > min(kafka_ts_ns + FUTURE_SLACK_NS, INT64_MAX):
        raise RecordError(
            "timestamp_out_of_range",
            f"timestamp {time_ns} ns is outside 1990-01-01 .. the Kafka record's timestamp "
            f"({kafka_ts_ns} ns) + 24 h "
            "(seconds, milliseconds or microseconds sent as nanoseconds?)",
        )
    return time_ns


def _finite(
    name: str, value: float | None, *, positive: bool = False, nonneg: bool = False
) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise RecordError("not_finite", f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise RecordError("out_of_range", f"{name} must be > 0, got {value}")
    if nonneg and value < 0:
        raise RecordError("out_of_range", f"{name} must be >= 0, got {value}")


def _check_levels(side: str, levels: list[Level]) -> None:
    for i, level in enumerate(levels):
        price, qty = level.price, level.quantity
        if not (math.isfinite(price) and price > 0):
            raise RecordError(
                "out_of_range", f"{side}[{i}].price must be finite and > 0, got {price}"
            )
        if not (math.isfinite(qty) and qty >= 0):
            raise RecordError(
                "out_of_range", f"{side}[{i}].quantity must be finite and >= 0, got {qty}"
            )


_INF: Final = math.inf
# tuple.__new__ skips the NamedTuple's Python-level __new__ (a third of a tick's decode time).
_new_tick: Final = tuple.__new__


def _levels_ok(levels: list[Level]) -> bool:
    """True when every level is valid (the common case); False sends it to _check_levels."""
    return all(0 < level.price < _INF and 0 <= level.quantity < _INF for level in levels)


def _precheck(value: bytes | None, limits: Limits) -> bytes:
    if value is None:
        raise RecordError("empty", "record has no value (tombstone)")
    if len(value) > limits.max_message_bytes:
        raise RecordError(
            "too_large",
            f"value is {len(value)} bytes, more than MAX_MESSAGE_BYTES={limits.max_message_bytes}",
        )
    return value


def _decode_error(exc: msgspec.DecodeError, value: bytes) -> RecordError:
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        if "Expected `object`" in text and "at `$`" not in text and "$." not in text:
            return RecordError("not_object", f"value is not a JSON object: {text}")
        if "Object missing required field" in text:
            return RecordError("missing_field", text)
        return RecordError("invalid_field", text)
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return RecordError("not_utf8", "value is not valid UTF-8")
    return RecordError("malformed_json", f"value is not valid JSON: {text}")


def _check_symbol(symbol: str) -> None:
    # PostgreSQL text cannot hold NUL; refusing it here keeps a COPY from failing later.
    if "\x00" in symbol:
        raise RecordError("invalid_field", "symbol must not contain NUL (\\u0000) - at `$.symbol`")


def decode_tick(value: bytes | None, kafka_ts_ns: int, limits: Limits) -> TickRow:
    raw = _precheck(value, limits)
    try:
        wire = TICK_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise _decode_error(exc, raw) from None
    except UnicodeDecodeError:  # msgspec raises it for bad UTF-8 inside a JSON string
        raise RecordError("not_utf8", "value is not valid UTF-8") from None
    symbol, price, change, rate, ts = (
        wire.symbol, wire.price, wire.change, wire.change_rate, wire.timestamp
    )  # fmt: skip
    # Fast path for the common valid record (comparisons are False for NaN); anything else
    # takes the checks below, which raise the exact reason in the same order.
    if not (
        0 < price < _INF
        and (change is None or -_INF < change < _INF)
        and (rate is None or -_INF < rate < _INF)
        and "\x00" not in symbol
    ):
        _check_symbol(symbol)
        _finite("price", price, positive=True)
        _finite("change", change)
        _finite("change_rate", rate)
    if type(ts) is not int or not MIN_TIME_NS <= ts <= min(
        kafka_ts_ns + FUTURE_SLACK_NS, INT64_MAX
    ):
        ts = parse_timestamp(ts, kafka_ts_ns)
    return _new_tick(TickRow, (ts, symbol, price, wire.volume, change, rate))


def decode_orderbook(value: bytes | None, kafka_ts_ns: int, limits: Limits) -> OrderBookRow:
    raw = _precheck(value, limits)
    try:
        wire = BOOK_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise _decode_error(exc, raw) from None
    except UnicodeDecodeError:  # msgspec raises it for bad UTF-8 inside a JSON string
        raise RecordError("not_utf8", "value is not valid UTF-8") from None
    symbol, bids, asks, ts = wire.symbol, wire.bids, wire.asks, wire.timestamp
    if "\x00" in symbol or not (_levels_ok(bids) and _levels_ok(asks)):
        _check_symbol(symbol)
        _check_levels("bids", bids)
        _check_levels("asks", asks)
    if type(ts) is not int or not MIN_TIME_NS <= ts <= min(
        kafka_ts_ns + FUTURE_SLACK_NS, INT64_MAX
    ):
        ts = parse_timestamp(ts, kafka_ts_ns)
    return _new_tick(OrderBookRow, (ts, symbol, bids, asks))


def decode(kind: TopicKind, value: bytes | None, kafka_ts_ms: int, limits: Limits) -> Row:
    """Decode one record value of a topic of `kind`; raise RecordError when it is invalid.

    A function of the record alone (value and Kafka timestamp): no clock is read here."""
    return kind_of(kind).decode(value, kafka_ts_ms * 1_000_000, limits)
