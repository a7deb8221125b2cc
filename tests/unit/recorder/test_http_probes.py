"""The probes' pure halves: /ready names each part that is not ready, /live needs nothing."""

from __future__ import annotations

from recorder.http import readiness_report


def test_ready_when_every_part_is() -> None:
    assert readiness_report({"consumer": (True, "x"), "timescaledb": (True, "y")}) == (
        200,
        "ready\n",
    )


def test_unready_names_each_failing_part_with_its_reason() -> None:
    status, body = readiness_report(
        {
            "consumer": (True, "not fetching"),
            "timescaledb": (False, "the database does not answer"),
            "dlq": (False, "refuses writes"),
        }
    )
    assert status == 503
    assert body == "not ready\ntimescaledb: the database does not answer\ndlq: refuses writes\n"
