"""The probes' pure halves: /ready names each part that is not ready with a reason code and a
fixed sentence, /health names each unhealthy part's code; neither carries an error's text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.core.partitions import HaltedAt
from recorder.core.readiness import NAMED_PARTITIONS, REASONS, Problem, describe, halt_cause
from recorder.http import health_report, readiness_report

CODES = sorted(REASONS)
CAUSES = ["log_replaced", "topic_recreated", "progress_vanished", "log_truncated"]
TOPIC = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True)
PARTITION = st.tuples(TOPIC, st.integers(0, 10_000), st.none() | st.sampled_from(CAUSES))
PROBLEM = st.builds(Problem, st.sampled_from(CODES), st.lists(PARTITION, max_size=8).map(tuple))
PARTS = st.dictionaries(
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.tuples(st.booleans(), PROBLEM)
)
LINE = re.compile(r"(?P<part>[a-z_]+): (?P<code>[a-z_]+)( \((?P<tps>[^)]*)\))? - (?P<why>.+)")


def test_ready_when_every_part_is() -> None:
    parts = {"consumer": (True, Problem("consumer_failed")), "s3": (True, Problem("paused"))}
    assert readiness_report(parts) == (200, "ready\n")


def test_unready_names_each_failing_part_with_its_code_and_partitions() -> None:
    status, body = readiness_report(
        {
            "consumer": (True, Problem("consumer_not_fetching")),
            "timescaledb": (False, Problem("writes_failing")),
            "partitions": (
                False,
                Problem("partition_halted", (("t", 0, "topic_recreated"), ("t", 3, None))),
            ),
        }
    )
    assert status == 503
    assert body == (
        "not ready\n"
        f"timescaledb: writes_failing - {REASONS['writes_failing']}\n"
        f"partitions: partition_halted (t[0] topic_recreated, t[3]) - "
        f"{REASONS['partition_halted']}\n"
    )


def test_many_partitions_are_counted_not_all_named() -> None:
    problem = Problem("partition_held", tuple(("t", p, None) for p in range(12)))
    line = describe("partitions", problem)
    assert f"t[{NAMED_PARTITIONS - 1}], and {12 - NAMED_PARTITIONS} more)" in line
    assert f"t[{NAMED_PARTITIONS}]" not in line


def test_a_problem_carries_only_known_codes() -> None:
    """An error's text cannot pass for a code: the body is built from the fixed vocabulary."""
    with pytest.raises(ValueError):
        Problem("OperationalError: connection to db.internal refused")
    with pytest.raises(ValueError):
        Problem("partition_halted", (("t", 0, "progress 7 beyond the log end 5"),))
    with pytest.raises(ValueError):
        health_report({"timescaledb": "password authentication failed for user alice"})


def test_halt_causes() -> None:
    assert halt_cause(HaltedAt((5,), 5, 3)) == "log_replaced"
    assert halt_cause(HaltedAt((5,), 5, 9, recreated=("a", "b"))) == "topic_recreated"
    assert halt_cause(HaltedAt((5, None), 5, 9, vanished="s3")) == "progress_vanished"
    assert halt_cause(HaltedAt((5,), 5, 9, truncated=True)) == "log_truncated"


@settings(max_examples=200, deadline=None)
@given(PARTS)
def test_ready_body_is_codes_sentences_and_partition_names_only(
    parts: dict[str, tuple[bool, Problem]],
) -> None:
    status, body = readiness_report(parts)
    failing = {name: problem for name, (ok, problem) in parts.items() if not ok}
    assert status == (503 if failing else 200)
    lines = body.splitlines()
    assert lines[0] == ("not ready" if failing else "ready")
    assert len(lines) == 1 + len(failing)
    for line, (name, problem) in zip(lines[1:], failing.items(), strict=True):
        m = LINE.fullmatch(line)
        assert m is not None, line
        assert (m["part"], m["code"], m["why"]) == (name, problem.code, REASONS[problem.code])
        named = [] if m["tps"] is None else m["tps"].split(", ")
        shown = problem.partitions[:NAMED_PARTITIONS]
        more = len(problem.partitions) - len(shown)
        assert named[: len(shown)] == [
            f"{t}[{p}]" + ("" if c is None else f" {c}") for t, p, c in shown
        ]
        assert named[len(shown) :] == ([f"and {more} more"] if more else [])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.none() | st.sampled_from(CODES)
    )
)
def test_health_body_names_each_part_healthy_or_its_code(parts: dict[str, str | None]) -> None:
    status, body = health_report(parts)
    ok = all(code is None for code in parts.values())
    assert status == (200 if ok else 503)
    assert body.splitlines() == ["OK" if ok else "UNHEALTHY"] + [
        f"{name}: healthy" if code is None else f"{name}: unhealthy {code}"
        for name, code in parts.items()
    ]


def test_every_code_is_documented_in_the_readme() -> None:
    """The README's probe table lists each code the probes may print."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \| [^|]*\| [^|]*\| [^|]*\|$", readme, re.M))
    assert set(REASONS) <= documented, set(REASONS) - documented
