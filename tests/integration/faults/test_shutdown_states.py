"""Fault scenario 8 (issue 27): the shutdown deadline holds in every state, start-up included.

A store or Kafka unreachable while the recorder starts (it waits with `store_retry` lines), then
SIGTERM: the process ends within SHUTDOWN_TIMEOUT_SEC with exit code 4 and has written nothing;
a recorder started afterwards records everything exactly once. And an S3 outage mid-run with
records buffered for the lake, then SIGTERM: the database's buffers flush, the lake's are cut
at the deadline (exit code 3), nothing is committed that was not written, and the next
recorder replays the rest exactly once.

Exit times are bounded by the configured deadline plus a margin that is a share of it (signal
delivery and process exit), never by a wall-clock constant of their own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from recorder.core.shutdown import ExitCode
from tests.integration.faults.harness import Deployment, record_result, scaled
from tests.support.recorder_proc import RecorderProcess, verify

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DEADLINE_SEC = 5.0  # SHUTDOWN_TIMEOUT_SEC of the recorders under test
MARGIN_SHARE = 0.5  # of the deadline: delivering the signal and leaving the process
LIMIT_SEC = DEADLINE_SEC * (1 + MARGIN_SHARE)
WAIT_FOR_EXIT_SEC = DEADLINE_SEC * 6  # how long the test waits before calling it a hang
STUCK_SEC = 60  # how long a recorder may take to show that it waits for the store
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connections are refused


def events(rec: RecorderProcess, name: str) -> list[dict[str, Any]]:
    """The recorder's log lines of event `name`, parsed."""
    out = []
    for line in rec.log_path.read_text(errors="replace").splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def sigterm(dep: Deployment, rec: RecorderProcess) -> tuple[int, float]:
    """SIGTERM and wait for the exit; a recorder still running long after the deadline fails."""
    try:
        return dep.terminate(rec, WAIT_FOR_EXIT_SEC)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"still running {WAIT_FOR_EXIT_SEC:.0f}s after SIGTERM "
            f"(SHUTDOWN_TIMEOUT_SEC={DEADLINE_SEC})\n{rec.tail(20)}"
        )


async def assert_nothing_recorded(dep: Deployment) -> None:
    """A recorder that never started wrote nothing: no progress in either store, nothing
    committed to Kafka for its group."""
    progress = await dep.progress()
    assert progress == {"timescaledb": {}, "s3": {}}, progress
    assert await dep.committed() == {}


async def stuck_at_start_up_then_sigterm(
    dep: Deployment, scenario: str, what: str, step: str, **env: object
) -> None:
    total = scaled(3000)
    await dep.feed(total, invalid_ratio=0.01).wait()
    rec = dep.recorder(wait_ready=None, SHUTDOWN_TIMEOUT_SEC=DEADLINE_SEC, **env)
    await dep.wait_for(
        f"the recorder retrying {what}",
        lambda: any(e.get("what") == what for e in events(rec, "store_retry")),
        STUCK_SEC,
    )

    code, seconds = sigterm(dep, rec)

    assert seconds <= LIMIT_SEC, f"exit {seconds:.1f}s after SIGTERM, deadline {DEADLINE_SEC}s"
    assert code == ExitCode.NOT_STARTED, rec.tail()
    [requested] = events(rec, "shutdown_requested")
    assert requested["state"]["phase"] == "starting", requested
    assert requested["state"]["step"].startswith(step), requested
    assert what in requested["state"]["waiting_for"], requested
    [stopped] = events(rec, "recorder_stopped")
    assert stopped["phase"] == "starting" and stopped["left"] == {}, stopped
    assert stopped["exit_code"] == ExitCode.NOT_STARTED, stopped
    await assert_nothing_recorded(dep)

    # Nothing lost: a recorder that can reach everything records the whole feed exactly once
    # (and, stopped with nothing buffered, exits with 0).
    rec = dep.recorder()
    await dep.wait_drained(limit_s=180)
    code, _ = sigterm(dep, rec)
    assert code == ExitCode.OK, rec.tail()
    report = await dep.verify_exact()
    record_result(scenario, report, produced=total, recovery_s=None, exit_s=round(seconds, 2))


async def test_sigterm_while_the_database_is_unreachable_at_start_up(
    deployment: Deployment,
) -> None:
    await stuck_at_start_up_then_sigterm(
        deployment,
        "SIGTERM, database unreachable at start-up",
        what="connect",
        step="timescaledb: connecting",
        TIMESCALEDB_PORT=UNREACHABLE.rsplit(":", 1)[1],
    )


async def test_sigterm_while_kafka_is_unreachable_at_start_up(deployment: Deployment) -> None:
    await stuck_at_start_up_then_sigterm(
        deployment,
        "SIGTERM, Kafka unreachable at start-up",
        what="kafka_connect",
        step="kafka: connecting",
        KAFKA_BROKERS=UNREACHABLE,
    )


async def test_sigterm_while_s3_is_unreachable_at_start_up(deployment: Deployment) -> None:
    await stuck_at_start_up_then_sigterm(
        deployment,
        "SIGTERM, S3 unreachable at start-up",
        what="lake_check",
        step="s3: connecting",
        S3_ENDPOINT_URL=f"http://{UNREACHABLE}",
        DB_WRITE_ENABLED="false",
    )


async def test_sigterm_during_an_s3_outage_with_buffered_records(deployment: Deployment) -> None:
    dep = deployment
    total = scaled(20_000)
    # The database flushes as usual; the lake holds everything until the shutdown (no size or
    # age trigger, no memory pressure).
    rec = dep.recorder(
        S3_BATCH_SIZE=10_000_000,
        S3_BATCH_TIMEOUT_SEC=3600,
        MAX_BUFFER_SIZE=10_000_000,
        SHUTDOWN_TIMEOUT_SEC=DEADLINE_SEC,
    )
    await dep.feed(total, invalid_ratio=0.01).wait()
    ends = await dep.end_offsets()

    async def database_has_everything() -> bool:
        return dep.behind(ends, await dep.db_progress()) == 0

    await dep.wait_for("the database holding the feed", database_has_everything, 120)
    gauge = "datarecorder_buffer_records"  # refreshed every 2 s
    await dep.wait_for(
        "the lake's buffers holding the feed",
        lambda: dep.metric(rec, gauge, sink="s3") >= total * 0.9,
        30,
    )
    await asyncio.to_thread(dep.stack.stop, "s3")

    code, seconds = sigterm(dep, rec)

    assert seconds <= LIMIT_SEC, f"exit {seconds:.1f}s after SIGTERM, deadline {DEADLINE_SEC}s"
    assert code == ExitCode.CUT, rec.tail()
    [requested] = events(rec, "shutdown_requested")
    assert requested["state"]["phase"] == "running", requested
    assert requested["state"]["buffered"]["s3"] >= total * 0.9, requested
    [stopped] = events(rec, "recorder_stopped")
    assert stopped["flushed"] is False and stopped["exit_code"] == ExitCode.CUT, stopped
    assert stopped["left"].get("s3", 0) >= total * 0.9, stopped
    assert "timescaledb" not in stopped["left"], stopped

    await asyncio.to_thread(dep.stack.start, "s3")
    # Exactly what each store's progress says, nothing committed that was not written: the
    # database holds every record and Kafka's committed offsets are its progress; the lake
    # holds none (its progress is where assignment started it) and no stray file.
    progress = await dep.progress()
    assert progress["timescaledb"] == {tp: end for tp, end in ends.items() if tp in ends}, progress
    assert progress["s3"] is not None and set(progress["s3"].values()) == {0}, progress
    assert await dep.committed() == {tp: end for tp, end in ends.items() if end > 0}
    report = await asyncio.to_thread(verify, dep.env)
    stores = {s["store"]: s for s in report["stores"]}
    for name in ("timescaledb.tick_data", "timescaledb.orderbook", "dead_letters"):
        assert stores[name]["ok"], stores[name]
    for name in ("parquet.tick", "parquet.orderbook"):
        assert stores[name]["found"] == 0 and stores[name]["unexpected"] == 0, stores[name]

    # The rest is replayed: the next recorder writes the lake's share exactly once.
    rec = dep.recorder()
    await dep.wait_drained(ends, limit_s=180, what="the replay after the cut shutdown")
    code, _ = sigterm(dep, rec)
    assert code == ExitCode.OK, rec.tail()
    report = await dep.verify_exact()
    record_result(
        "SIGTERM during an S3 outage",
        report,
        produced=total,
        recovery_s=None,
        exit_s=round(seconds, 2),
        left_s3=stopped["left"]["s3"],
    )
