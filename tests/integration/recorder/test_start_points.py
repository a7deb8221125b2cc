"""Where recording starts, on the real stack: START_FROM for a new recorder, `reset-progress
--to-time`, and `reset-progress --from-group` carrying progress over a group rename.

Each compares both stores with what was sent, every field: the records from the chosen point
on, exactly once, and none before it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from recorder.tools.reset_progress import DB_NOT_SCOPED
from tests.integration.faults.harness import Deployment
from tests.support import as_sent
from tests.support.recorder_proc import reset_progress as run_reset_cli

pytestmark = pytest.mark.integration

TICKS, CUT, LATER = 800, 500, 400


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def assert_stores_hold(dep: Deployment, records: list[as_sent.Sent]) -> None:
    tick = dep.topics[0]
    got = await as_sent.stored(dep.env)
    for name, micros in (("db.tick", True), ("lake.tick", False)):
        want = as_sent.expected(records, tick, micros=micros)
        assert got[name] == want, (name, as_sent.differences(want, got[name]))


async def sent_ticks(dep: Deployment, first: int = 0, n: int = TICKS) -> list[as_sent.Sent]:
    ticks = as_sent.corpus((dep.topics[0], dep.topics[1]), 1, ticks=n, books=0, seed=5, first=first)
    await as_sent.send(dep.env["KAFKA_BROKERS"], ticks)
    return ticks  # one partition: list order is offset order


def from_time(ticks: list[as_sent.Sent], ms: int) -> int:
    """Kafka's answer: the first offset stamped at or after `ms` (timestamps are shuffled)."""
    return next(i for i, r in enumerate(ticks) if r.kafka_ms >= ms)


async def test_start_from_time_starts_a_new_recorder_there(one_partition: Deployment) -> None:
    dep = one_partition
    ticks = await sent_ticks(dep)
    ms = sorted(r.kafka_ms for r in ticks)[CUT]
    at = from_time(ticks, ms)
    rec = dep.recorder(START_FROM=f"time:{rfc3339(ms)}")
    await dep.wait_drained({(dep.topics[0], 0): TICKS}, limit_s=120, what="from the time")
    progress = await dep.progress()
    dep.terminate(rec)
    assert at > 0
    await assert_stores_hold(dep, ticks[at:])
    # Only where no sink had progress: a restart resumes from the stored progress.
    assert progress["timescaledb"][(dep.topics[0], 0)] == TICKS  # type: ignore[index]


async def test_to_time_moves_progress_to_the_first_record_at_or_after_it(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    tick = dep.topics[0]
    ticks = await sent_ticks(dep)
    ms = sorted(r.kafka_ms for r in ticks)[CUT]
    at = from_time(ticks, ms)
    migrate = [sys.executable, "-m", "recorder.cli", "migrate"]
    await asyncio.to_thread(subprocess.run, migrate, env=dep.env, check=True)
    code, out = run_reset_cli(dep.env, "--topic", tick, "--to-time", rfc3339(ms), "--apply")
    assert code == 0 and out.splitlines()[-1] == "applied", out
    assert (await dep.progress()) == {"timescaledb": {(tick, 0): at}, "s3": {(tick, 0): at}}
    code, out = run_reset_cli(dep.env, "--topic", tick, "--to-time", "2999-01-01T00:00:00Z")
    rows = [line.split() for line in out.splitlines() if line.startswith(f"{tick}[0]")]
    assert code == 0 and [r[5] for r in rows] == [str(TICKS)] * 2, out  # none after: log end

    rec = dep.recorder()
    await dep.wait_drained({(tick, 0): TICKS}, limit_s=120, what="after --to-time")
    dep.terminate(rec)
    await assert_stores_hold(dep, ticks[at:])


async def test_from_group_carries_a_rename_on_exactly(one_partition: Deployment) -> None:
    dep = one_partition
    tick, book = dep.topics
    first = await sent_ticks(dep, 0, CUT)
    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="earliest")
    await dep.wait_drained({(tick, 0): CUT}, limit_s=120, what="old group")
    dep.terminate(rec)

    old = dep.env["KAFKA_GROUP_ID"]
    dep.env["KAFKA_GROUP_ID"] = f"{old}-renamed"
    for topic in (tick, book):
        code, out = run_reset_cli(dep.env, "--topic", topic, "--from-group", old)
        assert code == 0 and "dry run" in out and DB_NOT_SCOPED in out, out
        code, out = run_reset_cli(dep.env, "--topic", topic, "--from-group", old, "--apply")
        assert code == 0 and f"deleted group {old!r}'s progress object" in out, out
    assert (await dep.s3_progress()) == {(tick, 0): CUT, (book, 0): 0}

    later = await sent_ticks(dep, CUT, LATER)
    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="latest")  # the reset policy never applies
    await dep.wait_drained({(tick, 0): CUT + LATER}, limit_s=120, what="renamed group")
    dep.terminate(rec)
    await assert_stores_hold(dep, first + later)
