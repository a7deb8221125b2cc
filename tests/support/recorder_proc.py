"""The recorder as a subprocess, for tests: the dev-services library's runner
(recorder/devstack/recorder_proc.py, shared with the benchmarks) plus pytest's verdicts.

Owns `wait_exactly_once`, which fails the test with the last report and the recorder's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    "reset_progress",
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


def reset_progress(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`datarecorder reset-progress ARGS` with `env`: its exit code (0 applied or a dry run,
    1 refused or not applied) and its report (logs go to stderr)."""
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "reset-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    return res.returncode, res.stdout
