"""Using `scripts/stack` (or external services) from another program: the test fixtures
(tests/fixtures/stack.py) and the benchmark (bench/stack.py) find, start, share (leases) and
describe the services the same way through it."""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

from recorder.devstack.procs import pid_alive
from recorder.devstack.stack.state import REPO as REPO  # re-exported for the fixtures

STACK_SCRIPT = REPO / "scripts" / "stack"

# The variables `scripts/stack up` writes to .stack/env; the recorder reads the same names.
ENV_KEYS = (
    "KAFKA_BROKERS",
    "TIMESCALEDB_HOST",
    "TIMESCALEDB_PORT",
    "TIMESCALEDB_USER",
    "TIMESCALEDB_PASSWORD",
    "TIMESCALEDB_DB",
    # The native TimescaleDB (Apache edition) server beside the plain one; tests point the
    # recorder's TIMESCALEDB_* at it (tests/fixtures/stack.py, Stack.on_server).
    "TSDB_APACHE_HOST",
    "TSDB_APACHE_PORT",
    "TSDB_APACHE_USER",
    "TSDB_APACHE_PASSWORD",
    "TSDB_APACHE_DB",
    # The full edition (PGlite behind recorder/devstack/pglite_bridge.mjs): one shared session.
    "TSDB_FULL_HOST",
    "TSDB_FULL_PORT",
    "TSDB_FULL_USER",
    "TSDB_FULL_PASSWORD",
    "TSDB_FULL_DB",
    "S3_BUCKET",
    "S3_REGION",
    "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
# When all of these are set, those services are used instead of starting our own.
EXTERNAL_MARKERS = ("KAFKA_BROKERS", "TIMESCALEDB_HOST", "S3_ENDPOINT_URL")
EXTERNAL_DEFAULTS = {
    "TIMESCALEDB_PORT": "5432",
    "TIMESCALEDB_USER": "recorder",
    "TIMESCALEDB_PASSWORD": "recorder",
    "TIMESCALEDB_DB": "marketdata",
    "S3_BUCKET": "market-data",
    "S3_REGION": "us-east-1",
}
STACK_UP_TIMEOUT_S = 900  # a cold Maven resolve of Kafka's jars included
# `stop`/`start` of one service: its own readiness limit (Kafka's and the bridge's: 120 s),
# plus the wait for the state lock (another session's `up`) and Python's start-up. At 120 s,
# as it was, the caller gave up first on a loaded machine and saw a TimeoutExpired, not why.
STACK_SWITCH_TIMEOUT_S = 400


class StackRetried(UserWarning):
    """`scripts/stack up` failed once and a retry brought it up: shown in pytest's warnings
    summary, so that a start-up failure is looked at instead of hidden by the retry."""


class StackUnavailable(RuntimeError):
    """The services cannot be had (the message says why)."""


def parse_env_file(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*export\s+([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2).strip().strip("'\"")
    return env


def run_stack(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        check=False,
    )


def external_env() -> dict[str, str] | None:
    """The external services' variables when all markers are set, with defaults filled in."""
    if not all(os.environ.get(k) for k in EXTERNAL_MARKERS):
        return None
    env = {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}
    for key, default in EXTERNAL_DEFAULTS.items():
        env.setdefault(key, default)
    env.setdefault("AWS_DEFAULT_REGION", env["S3_REGION"])
    return env


def up_with_lease(lease: str) -> tuple[dict[str, str], Path]:
    """`scripts/stack up --lease LEASE`; returns the stack's environment and state directory.
    On failure the lease is released and StackUnavailable says why."""
    for attempt in (1, 2):
        try:
            res = run_stack("up", "--lease", lease, timeout=STACK_UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            release(lease)
            raise StackUnavailable(
                f"scripts/stack up did not finish in {STACK_UP_TIMEOUT_S}s"
            ) from None
        if res.returncode == 0:
            break
        # `up` keeps what runs and starts the rest: one more try rides out a service that
        # fell over while starting on a loaded machine (its log is in the message if not).
        if attempt == 1:
            failed = [ln for ln in res.stderr.splitlines() if "FAILED" in ln or "error" in ln]
            warnings.warn(
                f"scripts/stack up failed once, retrying: {' / '.join(failed) or res.stderr}",
                StackRetried,
                stacklevel=2,
            )
    if res.returncode != 0:
        release(lease)
        raise StackUnavailable(f"scripts/stack up failed:\n{res.stdout}{res.stderr}")
    state_dir = stack_dir()
    env = parse_env_file((state_dir / "env").read_text())
    missing = [k for k in ENV_KEYS if k not in env]
    if missing:
        release(lease)
        raise StackUnavailable(f"{state_dir}/env lacks {missing}")
    return env, state_dir


def stack_dir() -> Path:
    """The state directory `scripts/stack` uses (it exports the same default)."""
    return Path(os.environ.get("DATARECORDER_STACK_DIR") or REPO / ".stack")


def release(lease: str) -> None:
    """Drop `lease`; the last holder of a stack a lease started stops it."""
    run_stack("release", lease)


def holds_lease(lease: str) -> bool:
    return (stack_dir() / "leases" / lease).exists()


def other_leases(lease: str | None) -> list[int]:
    """Live leases on the managed stack other than `lease` (other pytest runs, benchmarks)."""
    leases = stack_dir() / "leases"
    out = []
    for f in leases.iterdir() if leases.exists() else []:
        if f.name.isdigit() and f.name != lease and pid_alive(int(f.name)):
            out.append(int(f.name))
    return out
