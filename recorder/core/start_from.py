"""START_FROM and `--to-time`: a point of the log to start at, parsed (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

START_FROM_FORM = (
    "expected time:<RFC 3339 date-time with a zone> (e.g. time:2026-12-01T00:00:00Z), "
    "offset:<integer >= 0> (e.g. offset:12345), or empty for the reset policy"
)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class StartFrom:
    """A point of the log to start at: a Kafka timestamp in ms (`time`) or an offset."""

    kind: Literal["time", "offset"]
    value: int


def parse_rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 date-time with a zone (digits below the ms
    are dropped, toward the past); ValueError otherwise."""
    text = text.strip()
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"{text!r} is not an RFC 3339 date-time with a zone")
    head, dot, rest = text.upper().partition(".")
    fraction = ""
    if dot:  # Python reads 6 digits at most: keep the ms, the rest only says where the zone is
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, rest = rest[:digits], rest[digits:]
    when = datetime.fromisoformat(head.replace(" ", "T") + rest.replace("Z", "+00:00"))
    millis = int(fraction[:3].ljust(3, "0")) if fraction else 0
    return int(when.timestamp()) * 1000 + millis


def parse_start_from(value: str) -> StartFrom | None:
    """START_FROM's value parsed; ValueError with the expected form when it is none of them."""
    value = value.strip()
    if not value:
        return None
    kind, sep, rest = value.partition(":")
    kind = kind.strip().lower()
    try:
        if sep and kind == "time":
            return StartFrom("time", parse_rfc3339_ms(rest))
        if sep and kind == "offset" and rest.strip().isascii() and rest.strip().isdigit():
            return StartFrom("offset", int(rest.strip()))
    except ValueError:
        pass
    raise ValueError(f"{value!r}: {START_FROM_FORM}")
