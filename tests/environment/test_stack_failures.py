"""A stack service that cannot start says why in one line: its exit status and its last error.

Runs `scripts/stack start timescale-full` (the PGlite bridge) on a private state directory,
against a port somebody else holds, the way a port taken between choosing and binding it would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.devstack.client import REPO, STACK_SCRIPT
from tests.fixtures.stack import unavailable

pytestmark = pytest.mark.integration

# The bridge binds its port before it boots PGlite, so this start fails in about a second;
# the limit is for a machine too loaded even for that (and for a bridge that binds late again).
START_TIMEOUT_S = 300


def stack(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK_SCRIPT), *args],
        cwd=REPO,
        env={**os.environ, "DATARECORDER_STACK_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def private_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory of our own (not the shared stack's), torn down afterwards."""
    if shutil.which("node") is None:
        unavailable("node is not installed")
    fetched = subprocess.run(
        ["bash", str(REPO / "scripts" / "timescaledb"), "pglite"], capture_output=True, text=True
    )
    if fetched.returncode != 0:
        unavailable(f"the full edition is not fetched: {fetched.stderr.strip()}")
    state = tmp_path / "stack"
    try:
        yield state
    finally:
        stack(state, "down")


def test_a_bridge_that_cannot_listen_says_why_in_one_line(private_state: Path) -> None:
    service = private_state / "timescale-full"
    service.mkdir(parents=True)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        (service / "state.json").write_text(json.dumps({"configured": True, "port": port}))
        res = stack(private_state, "start", "timescale-full")

    assert res.returncode == 1, res.stdout + res.stderr
    failed = [ln for ln in res.stderr.splitlines() if ln.startswith("stack: FAILED")]
    assert len(failed) == 1, res.stderr
    # The one line names the exit status and the cause, not just "exited while starting".
    assert "timescale-full" in failed[0]
    assert "exited while starting (exit status 1)" in failed[0], failed[0]
    assert "EADDRINUSE" in failed[0], failed[0]
    # The bridge's log holds its own words and the exit status the stack saw.
    log = (service / "bridge.log").read_text()
    assert "EADDRINUSE" in log
    assert "exited while starting (exit status 1)" in log
