"""Fault scenario: the tick topic is deleted and recreated under a running recorder.

The sinks' progress now lies beyond the new log's end. Before the fix the consumer reset to
the earliest offset and the sinks silently skipped every new record below their old progress.
Now the partitions halt loudly (an error log, `datarecorder_partition_halted`, /ready 503 with
the reason) until an operator stops the recorder (reset-progress refuses partitions a running
member owns) and runs `datarecorder reset-progress`; then the new log is recorded.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tests.integration.faults.harness import Deployment, record_result
from tests.support.recorder_proc import http_get
from tests.support.recorder_proc import reset_progress as reset_progress_cli

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


async def recreate(brokers: str, topic: str, partitions: int) -> None:
    """Delete `topic` and create it again, empty, with `partitions`. A metadata request of the
    running recorder may auto-create it first (with the broker's default partition count):
    then it is grown to `partitions`, which is a recreated, empty topic just the same."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        deadline = time.monotonic() + 60
        while True:  # deletion completes asynchronously
            assert time.monotonic() < deadline, "the topic never came back"
            try:
                resp = await admin.create_topics([NewTopic(topic, partitions, 1)])
                codes = [e[1] for e in resp.topic_errors]
            except TopicAlreadyExistsError:
                codes = [TopicAlreadyExistsError.errno]
            if codes == [0]:
                return
            if codes == [TopicAlreadyExistsError.errno]:
                described = await admin.describe_topics([topic])
                have = len(described[0]["partitions"]) if described else 0
                if described and described[0]["error_code"] == 0 and have > 0:
                    if have < partitions:
                        await admin.create_partitions({topic: NewPartitions(partitions)})
                    return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


def reset_progress(env: dict[str, str], *args: str, refused: bool = False) -> str:
    code, out = reset_progress_cli(env, *args)
    assert code == (1 if refused else 0), out[-3000:]
    return out


async def test_recreated_topic_halts_until_progress_is_reset(deployment: Deployment) -> None:
    dep = deployment
    tick = next(t for t in dep.topics if "tick" in t)
    rec = dep.recorder()
    await dep.feed(11_000).wait()
    await dep.wait_drained(limit_s=120, what="before the deletion")
    old = {tp: off for tp, off in (await dep.db_progress() or {}).items() if tp[0] == tick}

    await recreate(dep.env["KAFKA_BROKERS"], tick, dep.partitions)
    await dep.feed(1_100, seed=7).wait()  # 1,000 ticks: fewer than before in every partition
    deadline = time.monotonic() + 120
    while dep.metric(rec, "datarecorder_partition_halted", topic=tick) < dep.partitions:
        assert time.monotonic() < deadline, rec.tail(60)
        dep.check_alive()
        await asyncio.sleep(0.5)
    status, body = http_get(rec.url + "/ready", 3.0)
    assert status == 503 and "log_replaced" in body and "reset-progress" in body, body
    assert "beyond the log end" not in body, body  # the detail is in the log only
    log = rec.log_path.read_text()
    assert '"partition_halted"' in log and "beyond the log end" in log
    assert {tp: off for tp, off in (await dep.db_progress() or {}).items() if tp[0] == tick} == old

    # The halted partitions are still assigned to the running recorder: refused, unchanged.
    refused = reset_progress(dep.env, "--topic", tick, "--to", "earliest", "--apply", refused=True)
    assert "running member" in refused and "stop the recorder" in refused, refused
    assert {tp: off for tp, off in (await dep.db_progress() or {}).items() if tp[0] == tick} == old
    dep.terminate(rec)
    dry = reset_progress(dep.env, "--topic", tick, "--to", "earliest")
    assert "dry run" in dry
    applied = reset_progress(dep.env, "--topic", tick, "--to", "earliest", "--apply")
    assert applied.splitlines()[-1] == "applied", applied
    released = time.monotonic()
    rec = dep.recorder()
    targets = await dep.end_offsets()
    await dep.wait_drained(targets, limit_s=120, what="after reset-progress")
    assert http_get(rec.url + "/ready", 3.0)[0] == 200
    new_ticks = sum(off for (t, _), off in targets.items() if t == tick)
    assert new_ticks == 1_000
    conn = await asyncpg.connect(dep.stack.pg_dsn(dep.env["TIMESCALEDB_DB"]))
    try:  # the old log's rows stay, the new log's are added: nothing skipped
        assert await conn.fetchval("SELECT count(*) FROM tick_data") == sum(old.values()) + 1_000
    finally:
        await conn.close()
    record_result(
        "topic deleted and recreated (halt, reset-progress)",
        {"stores": [], "dead_letter_duplicates": 0},
        produced=12_100,
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(time.monotonic() - released, 1),
        halted_partitions=dep.partitions,
    )
