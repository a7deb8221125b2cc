"""Fault scenarios at the log's start: retention (DeleteRecords) removes records that no sink
had written while the recorder was down.

One partition, reset `latest`, progress 1,000, recorder stopped, 2,000 more produced,
DeleteRecords to 2,000. Before the fix aiokafka's own reset jumped to the log end on restart:
the 1,000 retained records 2,000-2,999 reached neither store, /ready said 200, nothing was
logged. Now the partition resumes at the log start and the lost range is loud; with
ON_LOG_TRUNCATION=halt it halts instead.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from tests.integration.faults.harness import Deployment, record_result
from tests.support import as_sent
from tests.support.recorder_proc import http_get

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FIRST, LATER, DELETED_BEFORE = 1000, 2000, 2000


async def _delete_records(brokers: str, topic: str, before: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before)})
    finally:
        await admin.close()


async def _recorded_then_truncated(
    dep: Deployment, on_truncation: str = "resume"
) -> tuple[list[Any], list[Any]]:
    """Progress FIRST in both sinks, the recorder stopped, LATER more sent, the log's start
    moved to DELETED_BEFORE. Returns (first batch, later batch) as sent."""
    tick = dep.topics[0]
    first = as_sent.corpus((tick, dep.topics[1]), 1, ticks=FIRST, books=0, seed=1)
    later = as_sent.corpus((tick, dep.topics[1]), 1, ticks=LATER, books=0, seed=2, first=FIRST)
    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="latest", ON_LOG_TRUNCATION=on_truncation)
    await dep.wait_for(
        "partitions assigned", lambda: '"partitions_assigned"' in rec.log_path.read_text(), 90
    )
    await as_sent.send(dep.env["KAFKA_BROKERS"], first)
    await dep.wait_drained({(tick, 0): FIRST}, limit_s=120, what="first batch")
    dep.terminate(rec)
    await as_sent.send(dep.env["KAFKA_BROKERS"], later)
    await _delete_records(dep.env["KAFKA_BROKERS"], tick, DELETED_BEFORE)
    return first, later


async def test_progress_below_the_log_start_resumes_there_and_counts_the_loss(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    tick = dep.topics[0]
    first, later = await _recorded_then_truncated(dep)
    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="latest")
    retained = first + later[DELETED_BEFORE - FIRST :]
    want = as_sent.ticks_wanted(retained, tick)
    await dep.wait_for(
        "the retained records in both stores", lambda: as_sent.holds_exactly(dep.env, want), 120
    )
    lost = DELETED_BEFORE - FIRST
    await dep.wait_for(
        "records_lost_total counted",
        lambda: (
            dep.metric(rec, "datarecorder_records_lost_total", topic=tick, reason="retention")
            == lost
        ),
        30,
    )
    events = [
        json.loads(line) for line in rec.log_path.read_text().splitlines() if line.startswith("{")
    ]
    lost_events = [e for e in events if e.get("event") == "records_lost"]
    assert [(e["first"], e["end"], e["count"]) for e in lost_events] == [
        (FIRST, DELETED_BEFORE, lost)
    ]
    assert lost_events[0]["level"] == "error", lost_events
    record_result(
        "retention below progress, reset=latest",
        as_sent.fault_report(want, await as_sent.stored(dep.env)),
        produced=FIRST + LATER,
        deleted_by_retention=lost,
    )


async def test_progress_below_the_log_start_halts_when_configured(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    first, _ = await _recorded_then_truncated(dep, "halt")
    rec = dep.recorder(KAFKA_AUTO_OFFSET_RESET="latest", ON_LOG_TRUNCATION="halt", wait_ready=None)

    def halted() -> bool:
        try:
            status, body = http_get(rec.url + "/ready", 3.0)
        except OSError:
            return False
        return status != 200 and "log_truncated" in body

    await dep.wait_for("/ready names the truncated partition", halted, 90)
    assert "below the log start" in rec.log_path.read_text()  # the detail: in the log only
    assert "below the log start" not in http_get(rec.url + "/ready", 3.0)[1]
    got = await as_sent.stored(dep.env)
    assert got["db.tick"] == as_sent.expected(first, dep.topics[0], micros=True)
    assert dep.metric(rec, "datarecorder_partition_halted", topic=dep.topics[0]) == 1
