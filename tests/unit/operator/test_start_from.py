"""spec.kafka.startFrom in the operator: parsed to the recorder's START_FROM, refused readably
otherwise (the same refusals as the CRD's schema and CEL rule, for a CRD applied without them).

Owns the rendering of START_FROM and the operator's refusals of a bad startFrom.
"""

from __future__ import annotations

from typing import Any

import pytest
from datarecorder_operator import environment
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import RecorderSpec, SpecError

from recorder.runtime.settings import parse_start_from

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}


def spec(start_from: Any) -> RecorderSpec:
    return parse_spec(
        "rec", "md", {**BASE, "kafka": {"brokers": ["k:9092"], "startFrom": start_from}}
    )


@pytest.mark.parametrize(
    ("start_from", "rendered"),
    [
        ({"time": "2026-12-01T00:00:00Z"}, "time:2026-12-01T00:00:00Z"),
        ({"time": "2026-12-01T09:00:00.250+09:00"}, "time:2026-12-01T09:00:00.250+09:00"),
        ({"offset": 0}, "offset:0"),
        ({"offset": 12345}, "offset:12345"),
    ],
)
def test_start_from_renders_the_recorders_start_from(
    start_from: dict[str, Any], rendered: str
) -> None:
    data = environment.config_data(spec(start_from))
    assert data["START_FROM"] == rendered
    parse_start_from(data["START_FROM"])  # and the recorder takes it


def test_no_start_from_renders_none() -> None:
    assert "START_FROM" not in environment.config_data(spec(None))
    assert "START_FROM" not in environment.config_data(
        parse_spec("rec", "md", {**BASE, "kafka": {"brokers": ["k:9092"]}})
    )


@pytest.mark.parametrize(
    ("start_from", "message"),
    [
        ({"time": "2026-12-01T00:00:00Z", "offset": 1}, r"exactly one of time and offset"),
        (
            {"timestamp": "2026-12-01T00:00:00Z"},
            r"exactly one of time and offset \(unknown: timestamp\)",
        ),
        ({"time": "2026-12-01"}, r"spec\.kafka\.startFrom\.time '2026-12-01' is not an RFC 3339"),
        ({"time": "2026-12-01T00:00:00"}, r"is not an RFC 3339 date-time"),
        ({"offset": -1}, r"spec\.kafka\.startFrom\.offset must be between 0 and"),
        ({"offset": "earliest"}, r"spec\.kafka\.startFrom\.offset must be an integer"),
        ({"offset": True}, r"must be an integer"),
        ("time:2026-12-01T00:00:00Z", r"spec\.kafka\.startFrom must be an object"),
    ],
)
def test_anything_else_is_refused_with_the_expected_form(start_from: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message) as refused:
        spec(start_from)
    if "object" not in message:
        assert "{time: " in str(refused.value) and "{offset: " in str(refused.value)
