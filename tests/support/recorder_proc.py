"""The recorder as a subprocess, for tests: the dev-services library's runner
(recorder/devstack/recorder_proc.py, shared with the benchmarks) plus pytest's verdicts.

Owns `wait_exactly_once`, which fails the test with the last report and the recorder's log.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from recorder.devstack.recorder_proc import (
    RecorderProcess,
    free_port,
    http_get,
    produce,
    verify,
    wait_until,
)

__all__ = [
    "RecorderProcess",
    "free_port",
    "http_get",
    "produce",
    "verify",
    "wait_exactly_once",
    "wait_until",
]

# Children of the test process (produce, verify, tools) print as they go: a failing test's
# output then shows what they said last.
os.environ.setdefault("PYTHONUNBUFFERED", "1")


def wait_exactly_once(
    env: dict[str, str], rec: RecorderProcess, timeout: float, interval: float = 3.0
) -> dict[str, Any]:
    """Poll `verify` until every store holds every record exactly once; fail the test with the
    last report and the recorder's log otherwise. Returns the passing report."""
    report: dict[str, Any] = {}

    def done() -> bool:
        nonlocal report
        report = verify(env)
        return bool(report["ok"])

    try:
        wait_until(done, timeout=timeout, interval=interval, what="stores exactly once")
    except TimeoutError:
        pytest.fail(f"not exactly once: {json.dumps(report, indent=1)}\n{rec.tail()}")
    return report
