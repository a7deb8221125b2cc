"""The services a benchmark run talks to: external ones from the environment, or scripts/stack.

Owns acquiring the stack (a lease, like the pytest fixtures, so the last user stops a stack it
did not find running), releasing it, and stopping/starting one service for the outage scenario.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO / "scripts" / "stack"
# Same markers and defaults as tests/fixtures/stack.py: all three set means "use those services".
EXTERNAL_MARKERS = ("KAFKA_BROKERS", "TIMESCALEDB_HOST", "S3_ENDPOINT_URL")
ENV_KEYS = (
    "KAFKA_BROKERS",
    "TIMESCALEDB_HOST",
    "TIMESCALEDB_PORT",
    "TIMESCALEDB_USER",
    "TIMESCALEDB_PASSWORD",
    "TIMESCALEDB_DB",
    "S3_BUCKET",
    "S3_REGION",
    "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
EXTERNAL_DEFAULTS = {
    "TIMESCALEDB_PORT": "5432",
    "TIMESCALEDB_USER": "recorder",
    "TIMESCALEDB_PASSWORD": "recorder",
    "TIMESCALEDB_DB": "marketdata",
    "S3_BUCKET": "market-data",
    "S3_REGION": "us-east-1",
}
UP_TIMEOUT_S = 900  # a cold Maven resolve of Kafka's jars included


class StackUnavailable(RuntimeError):
    """The services cannot be had: a real error for the benchmark (it needs them)."""


def parse_env_file(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*export\s+([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2).strip().strip("'\"")
    return env


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        check=False,
    )


@dataclass
class Stack:
    env: dict[str, str]
    managed: bool
    state_dir: Path | None = None
    lease: str | None = None

    def others_using(self) -> list[int]:
        """Live leases of other sessions (pytest runs) on this managed stack."""
        if self.state_dir is None:
            return []
        leases = self.state_dir / "leases"
        out = []
        for f in leases.iterdir() if leases.exists() else []:
            if f.name.isdigit() and f.name != self.lease and _alive(int(f.name)):
                out.append(int(f.name))
        return out

    def can_stop_services(self) -> bool:
        return self.managed and not self.others_using()

    def stop(self, service: str) -> None:
        res = _run("stop", service)
        if res.returncode != 0:
            raise RuntimeError(f"scripts/stack stop {service} failed:\n{res.stdout}{res.stderr}")

    def start(self, service: str) -> None:
        res = _run("start", service, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"scripts/stack start {service} failed:\n{res.stdout}{res.stderr}")

    def release(self) -> None:
        if self.lease is not None:
            _run("release", self.lease)
            self.lease = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire() -> Stack:
    """External services when their variables are set; else `scripts/stack up` with a lease."""
    if all(os.environ.get(k) for k in EXTERNAL_MARKERS):
        env = {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}
        for key, default in EXTERNAL_DEFAULTS.items():
            env.setdefault(key, default)
        env.setdefault("AWS_DEFAULT_REGION", env["S3_REGION"])
        return Stack(env=env, managed=False)
    lease = str(os.getpid())
    try:
        res = _run("up", "--lease", lease, timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _run("release", lease)
        raise StackUnavailable(f"scripts/stack up did not finish in {UP_TIMEOUT_S}s") from None
    if res.returncode != 0:
        _run("release", lease)
        raise StackUnavailable(f"scripts/stack up failed:\n{res.stdout}{res.stderr}")
    state_dir = Path(os.environ.get("DATARECORDER_STACK_DIR") or REPO / ".stack")
    env = parse_env_file((state_dir / "env").read_text())
    missing = [k for k in ENV_KEYS if k not in env]
    if missing:
        _run("release", lease)
        raise StackUnavailable(f"{state_dir}/env lacks {missing}")
    return Stack(env=env, managed=True, state_dir=state_dir, lease=lease)
