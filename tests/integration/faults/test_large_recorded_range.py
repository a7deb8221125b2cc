"""A pending lake range larger than this pod's buffers, on the real stack.

A pod with larger buffers (S3_BATCH_SIZE, MAX_BUFFER_SIZE) recorded the flush range [0, 2000)
of a partition and died before uploading it. The range can only be flushed whole (rule 4: one
range per first offset), so the pod that takes the partition over with MAX_BUFFER_SIZE=500
must hold all 2,000 records of it. Before, its buffers filled at 500, the consumer paused every
partition, and no flush could empty them: the pod was wedged with /ready 200. Now the partition
is fed on past the limit until the range completes, loudly, and both stores end up holding
every record as sent.
"""

from __future__ import annotations

import json

import pytest

from recorder.sinks.lake.encoder import Encoder
from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import S3Lake, StoredProgress
from tests.integration.faults.harness import Deployment, record_result
from tests.support import as_sent

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SENT, RANGE_END, BUFFER = 3000, 2000, 500


async def _record_range(dep: Deployment, topic: str) -> None:
    """What the pod with larger buffers left: the range [0, RANGE_END) recorded, nothing
    uploaded."""
    settings = as_sent.settings_of(dep.env)
    with as_sent.aws_credentials_of(dep.env):
        lake = S3Lake(settings)
        await lake.start()
        try:
            key = progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, topic, 0)
            none = StoredProgress(None, None)
            token = await lake.write_progress(key, none, 0)
            assert token is not None
            encoder = Encoder.of(settings).doc()
            assert await lake.write_progress(key, none.successor(token, 0), 0, RANGE_END, encoder)
        finally:
            await lake.close()


async def test_a_recorded_range_larger_than_the_buffers_completes(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    tick = dep.topics[0]
    sent = as_sent.corpus((tick, dep.topics[1]), 1, ticks=SENT, books=0, seed=11)
    await as_sent.send(dep.env["KAFKA_BROKERS"], sent)
    await _record_range(dep, tick)
    rec = dep.recorder(
        MAX_BUFFER_SIZE=BUFFER, FETCH_MAX_RECORDS=100, KAFKA_AUTO_OFFSET_RESET="earliest"
    )
    want = as_sent.ticks_wanted(sent, tick)
    await dep.wait_for(
        "every record in both stores, as sent", lambda: as_sent.holds_exactly(dep.env, want), 120
    )
    events = [
        json.loads(line) for line in rec.log_path.read_text().splitlines() if line.startswith("{")
    ]
    completing = [e for e in events if e.get("event") == "recorded_range_completing"]
    assert [(e["partition"], e["first"], e["end"]) for e in completing][:1] == [
        (0, 0, RANGE_END)
    ], completing
    record_result(
        "pending lake range larger than the buffers",
        as_sent.fault_report(want, await as_sent.stored(dep.env)),
        produced=SENT,
        recorded_range=RANGE_END,
        max_buffer_size=BUFFER,
    )
