"""PAUSED on the real stack: a paused recorder keeps its partitions and records nothing while
/ready says `paused`; the same deployment with PAUSED=false records everything, once.

Owns the recorder's half of `spec.state: paused` (the operator renders PAUSED=true).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.faults.harness import Deployment
from tests.integration.recorder.test_start_points import TICKS, assert_stores_hold, sent_ticks
from tests.support import as_sent
from tests.support.recorder_proc import http_get

pytestmark = pytest.mark.integration

# How long the paused recorder is watched for a record it should not take: many fetch rounds
# (100 ms each) and health rounds (2 s); an unpaused recorder drains these ticks in about 2 s.
WATCH_PAUSED_S = 8.0


async def test_paused_records_nothing_then_unpaused_records_everything(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    ticks = await sent_ticks(dep)
    paused = dep.recorder(PAUSED="true", wait_ready=None)

    def paused_and_in_group() -> bool:
        try:
            status, body = http_get(paused.url + "/ready")
        except OSError:  # not listening yet
            return False
        assigned = dep.metric(paused, "datarecorder_assigned_partitions")
        return status == 503 and "paused:" in body and assigned == len(dep.topics)

    await dep.wait_for(
        "/ready 503 with the part paused, partitions assigned", paused_and_in_group, 90
    )
    assert dep.metric(paused, "datarecorder_paused") == 1
    status, body = http_get(paused.url + "/ready")
    assert (status, body.splitlines()[1]) == (
        503,
        "paused: paused - PAUSED is true: the consumer fetches nothing",
    )
    # Nothing fetched, nothing recorded, no progress, through many rounds.
    end = time.monotonic() + WATCH_PAUSED_S
    while time.monotonic() < end:
        assert dep.metric(paused, "datarecorder_records_consumed_total") == 0
        dep.check_alive()
        await asyncio.sleep(0.5)
    # Progress is where the reset policy starts each partition (stored at assignment): 0.
    for sink, progress in (await dep.progress()).items():
        assert progress is None or set(progress.values()) <= {0}, (sink, progress)
    assert not any((await as_sent.stored(dep.env)).values())
    # Still a member: it still owns every partition.
    assert dep.metric(paused, "datarecorder_assigned_partitions") == len(dep.topics)
    dep.terminate(paused)

    running = dep.recorder(PAUSED="false")
    assert http_get(running.url + "/ready")[0] == 200
    assert dep.metric(running, "datarecorder_paused") == 0
    await dep.wait_drained({(dep.topics[0], 0): TICKS}, limit_s=120, what="after the pause")
    dep.terminate(running)
    await assert_stores_hold(dep, ticks)
