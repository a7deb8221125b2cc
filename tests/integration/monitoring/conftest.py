"""Fixtures of the monitoring tests: the Prometheus of scripts/monitoring (session), and a
per-test handle that removes the test's targets and rule files afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.stack import unavailable
from tests.integration.monitoring.prom import STATE, Prometheus, run_monitoring


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[str]:
    """`scripts/monitoring up` (down at the end if this session started it); its URL."""
    was_running = run_monitoring("status", timeout=60).returncode == 0
    up = run_monitoring("up")
    if up.returncode != 0:
        unavailable(f"scripts/monitoring up exited {up.returncode}:\n{up.stderr}{up.stdout}")
    port = (STATE / "ports" / "prometheus").read_text().strip()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if not was_running:
            run_monitoring("down", timeout=120)


@pytest.fixture
def prometheus(prometheus_server: str) -> Iterator[Prometheus]:
    handle = Prometheus(prometheus_server)
    try:
        yield handle
    finally:
        handle.cleanup()
