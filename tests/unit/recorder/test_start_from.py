"""START_FROM and `--to-time`: the RFC 3339 parser and where a point of the log lands (pure),
on generated times, zones, offsets and log bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.core.reset_plan import at_time, start_position
from recorder.runtime.settings import (
    ConfigError,
    StartFrom,
    load_settings,
    parse_rfc3339_ms,
    parse_start_from,
)

zones = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def written(when: datetime, zone: timezone, digits: int, sep: str, z: str) -> tuple[str, int]:
    """`when` as RFC 3339 text in `zone` with `digits` fraction digits, and its ms (floored)."""
    local = when.astimezone(zone)
    micros = local.microsecond
    nanos = micros * 1000
    kept = nanos - nanos % 10 ** (9 - digits) if digits else 0
    fraction = f".{kept // 10 ** (9 - digits):0{digits}d}" if digits else ""
    offset = local.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0:
        suffix = z
    else:
        suffix = f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    text = f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}{fraction}{suffix}"
    seconds = int(when.replace(microsecond=0).timestamp())
    return text, seconds * 1000 + kept // 1_000_000


@given(
    instants,
    zones,
    st.integers(0, 9),
    st.sampled_from(["T", "t", " "]),
    st.sampled_from(["Z", "z", "+00:00"]),
)
def test_rfc3339_is_read_to_the_millisecond(
    when: datetime, zone: timezone, digits: int, sep: str, z: str
) -> None:
    text, millis = written(when, zone, digits, sep, z)
    assert parse_rfc3339_ms(text) == millis
    assert parse_start_from(f"time:{text}") == StartFrom("time", millis)


@given(st.integers(0, 2**63 - 1))
def test_offsets(n: int) -> None:
    assert parse_start_from(f"offset:{n}") == StartFrom("offset", n)


@given(
    st.text().filter(lambda t: not t.strip().startswith(("time:", "offset:")) and t.strip())
    | st.sampled_from(
        ["time:2026-12-01T00:00:00", "time:2026-12-01", "offset:-1", "offset:", "offset:1.5"]
    )
)
def test_anything_else_is_refused_with_the_expected_form(value: str) -> None:
    with pytest.raises(ValueError, match="expected time:<RFC 3339"):
        parse_start_from(value)


def test_the_settings_error_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("START_FROM", "yesterday")
    with pytest.raises(ConfigError) as exc:
        load_settings(_env_file=None)
    assert "START_FROM='yesterday'" in str(exc.value)
    assert "offset:<integer >= 0>" in str(exc.value)
    monkeypatch.setenv("START_FROM", "")
    assert load_settings(_env_file=None).start_from() is None


bounds = st.tuples(st.integers(0, 100), st.integers(0, 100)).map(lambda b: (b[0], b[0] + b[1]))


@given(bounds, st.none() | st.integers(0, 300))
def test_a_time_lands_on_its_first_record_or_the_log_end(
    log: tuple[int, int], found: int | None
) -> None:
    start, end = log
    got = at_time(found, start, end)
    assert start <= got <= end
    if found is None:
        assert got == end
    elif start <= found <= end:
        assert got == found


@given(
    bounds,
    st.integers(0, 300),
    st.none() | st.integers(0, 300),
    st.booleans(),
    st.sampled_from(["time", "offset"]),
)
def test_start_position(
    log: tuple[int, int], value: int, found: int | None, recorded: bool, kind: str
) -> None:
    start, end = log
    spec = StartFrom("time" if kind == "time" else "offset", value)
    got = start_position(spec, found, start, end, recorded)
    assert start <= got <= end  # never a position the pipeline would have to correct
    if kind == "time":
        assert got == at_time(found, start, end)  # the record's own timestamp decides
    elif recorded:
        assert got == start  # a partition added to a recorded topic: from its beginning
    else:
        assert got == (value if start <= value <= end else (start if value < start else end))
