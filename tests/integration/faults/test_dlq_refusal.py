"""Fault scenario: the dead-letter topic refuses writes (its max.message.bytes is too small).

A dead letter that cannot be written must pause only its partitions and make the pod unready
with the cluster's reason, retried with backoff; no crash loop. After the topic is fixed every
record lands exactly once, and the dead letters carry the original bytes, however large.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.faults.harness import Deployment, listener_pid, record_result
from tests.support.recorder_proc import http_get

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

MAX_MESSAGE_BYTES = 4096
VALID = 3000


async def set_max_message_bytes(dep: Deployment, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=dep.env["KAFKA_BROKERS"])
    await admin.start()
    try:
        config = {"max.message.bytes": str(limit)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
    finally:
        await admin.close()


async def dead_letters(
    dep: Deployment, topic: str
) -> dict[tuple[str, int, int], tuple[bytes, dict[str, str]]]:
    """Every dead letter of `topic` by its source position -> (value, headers)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=dep.env["KAFKA_BROKERS"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        out: dict[tuple[str, int, int], tuple[bytes, dict[str, str]]] = {}
        for tp in tps:
            if ends[tp] == 0:
                continue
            consumer.seek(tp, 0)
            while await consumer.position(tp) < ends[tp]:
                for msg in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    h = {k: v.decode() for k, v in msg.headers}
                    where = (
                        h["x-recorder-source-topic"],
                        int(h["x-recorder-source-partition"]),
                        int(h["x-recorder-source-offset"]),
                    )
                    out[where] = (msg.value or b"", h)
    finally:
        await consumer.stop()
    return out


def ready(dep: Deployment, url: str) -> tuple[int, str]:
    try:
        return http_get(url + "/ready", 3.0)
    except OSError as exc:
        return 0, str(exc)


async def test_dlq_refusing_writes_pauses_and_recovers_exactly_once(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.env["MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE_BYTES)  # verify must judge by the same limit
    tick_topic = dep.topics[0]
    dlq_topic = f"{tick_topic}.dlq"
    await set_max_message_bytes(dep, dlq_topic, 1024)  # smaller than the dead letter below
    rec = dep.recorder()

    # Far over 2 x MAX_MESSAGE_BYTES (the old cut) and over the DLQ topic's limit.
    oversized = json.dumps(
        {"symbol": "BIG", "price": 1.0, "volume": 1, "pad": "x" * (5 * MAX_MESSAGE_BYTES)}
    ).encode()
    await dep.send_raw([(tick_topic, oversized)])
    await dep.feed(VALID).wait()

    # Refused: unready with the reason, retried (failures keep counting), the process stays up.
    deadline = time.monotonic() + 60
    while True:
        status, body = ready(dep, rec.url)
        failures = dep.metric(rec, "datarecorder_dead_letter_failures_total")
        if status == 503 and "dead_letters" in body and failures >= 3:
            break
        dep.check_alive()
        assert time.monotonic() < deadline, (status, body, failures, dep.logs())
        await asyncio.sleep(0.3)
    assert f"dead_letters: dead_letters_refused ({tick_topic}[" in body, body
    assert "MessageSizeTooLarge" not in body and "too large" not in body.lower(), body
    log = rec.log_path.read_text()  # the cluster's refusal is in the log only
    assert "MessageSizeTooLarge" in log or "too large" in log.lower(), dep.logs()
    assert dep.metric(rec, "datarecorder_dead_letter_blocked_partitions") == 1
    assert "dead_letters: unhealthy dead_letters_refused" in dep.health(rec)
    refused_at = time.monotonic()

    # The cause is fixed: the next retry goes through and everything drains.
    await set_max_message_bytes(dep, dlq_topic, 1024 * 1024)
    await dep.wait_drained(limit_s=120, what="after the DLQ topic was fixed")
    deadline = time.monotonic() + 30
    while ready(dep, rec.url)[0] != 200:
        dep.check_alive()
        assert time.monotonic() < deadline, (ready(dep, rec.url), dep.logs())
        await asyncio.sleep(0.3)
    recovery = time.monotonic() - refused_at
    assert dep.metric(rec, "datarecorder_dead_letter_blocked_partitions") == 0

    report = await dep.verify_exact()
    letters = await dead_letters(dep, dlq_topic)
    big = [v for v, _ in letters.values() if v.startswith(b'{"symbol": "BIG"')]
    assert big == [oversized], [len(v) for v in big]  # the original bytes, not a cut copy
    failures = dep.metric(rec, "datarecorder_dead_letter_failures_total")
    code, _ = dep.terminate(rec)
    assert code == 0, rec.tail()
    record_result(
        "DLQ refusing writes (max.message.bytes too small)",
        report,
        produced=VALID + 1,
        dead_letter_failures=int(failures),
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
    )


REFUSE_TRIGGER = """
CREATE FUNCTION test_refuse_symbol() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.symbol = 'REFUSE' THEN
    RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = '22023';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_refuse BEFORE INSERT ON tick_data
  FOR EACH ROW EXECUTE FUNCTION test_refuse_symbol();
"""


async def test_rows_the_database_refuses_go_to_their_source_topics_dlq(
    deployment: Deployment,
) -> None:
    """A valid record the database refuses (here: a trigger raising a data exception, SQLSTATE
    22023) is a dead letter of its source topic with its original bytes and the source
    headers, and no rollup counts it; the lake still holds it (S3 took it)."""
    dep = deployment
    tick_topic = dep.topics[0]
    rec = dep.recorder()  # migrations done once ready
    conn = await asyncpg.connect(dep.stack.pg_dsn(dep.env["TIMESCALEDB_DB"]))
    try:
        await conn.execute(REFUSE_TRIGGER)
    finally:
        await conn.close()
    now_ns = time.time_ns()
    refused = [
        json.dumps(
            {"symbol": "REFUSE", "price": 100.0 + i, "volume": 7, "timestamp": now_ns + i}
        ).encode()
        for i in range(3)
    ]
    await dep.feed(VALID).wait()
    await dep.send_raw([(tick_topic, v) for v in refused])
    await dep.feed(VALID, seed=43).wait()
    await dep.wait_drained(limit_s=120, what="with refused rows")
    report = await dep.verify_exact()  # the DB lacks exactly the dead-lettered db_refused rows
    letters = await dead_letters(dep, f"{tick_topic}.dlq")
    by_value = {v: (where, h) for where, (v, h) in letters.items()}
    for value in refused:
        assert value in by_value, sorted(len(v) for v in by_value)
        (topic, partition, offset), headers = by_value[value]
        assert topic == tick_topic and partition >= 0 and offset >= 0
        assert headers["x-recorder-error-reason"] == "db_refused"
        assert "refused by the test trigger" in headers["x-recorder-error"], headers
    conn = await asyncpg.connect(dep.stack.pg_dsn(dep.env["TIMESCALEDB_DB"]))
    try:
        rows = await conn.fetchval("SELECT count(*) FROM tick_data WHERE symbol = 'REFUSE'")
        bars = await conn.fetchval("SELECT count(*) FROM tick_1min WHERE symbol = 'REFUSE'")
    finally:
        await conn.close()
    assert (rows, bars) == (0, 0)
    assert rec.alive()
    record_result(
        "rows the database refuses (db_refused)",
        report,
        produced=2 * VALID + len(refused),
        db_refused=len(refused),
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=None,
    )


IDLE_IN_TRANSACTION = """
SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0)::float8
FROM pg_stat_activity WHERE datname = $1 AND state = 'idle in transaction'
"""


async def test_refused_rows_are_dead_lettered_with_no_transaction_open(
    deployment: Deployment,
) -> None:
    """The dead letters of rows the database refuses are sent after the transaction rolled
    back, then the flush goes again without them: with Kafka frozen (SIGSTOP) when such a
    flush runs, no transaction of the recorder waits on Kafka holding its locks (before: the
    originals were read from Kafka inside it, `idle in transaction` until the client gave up)."""
    dep = deployment
    tick_topic = dep.topics[0]
    rec = dep.recorder(BATCH_SIZE=100_000, BATCH_TIMEOUT_MS=4000)
    database = dep.env["TIMESCALEDB_DB"]
    conn = await asyncpg.connect(dep.stack.pg_dsn(database))
    try:
        await conn.execute(REFUSE_TRIGGER)
        now_ns = time.time_ns()
        refused = [
            json.dumps(
                {"symbol": "REFUSE", "price": 1.0 + i, "volume": 1, "timestamp": now_ns + i}
            ).encode()
            for i in range(3)
        ]
        await dep.feed(VALID).wait()
        await dep.send_raw([(tick_topic, v) for v in refused])
        await dep.wait_consumed(rec, VALID + len(refused))
        kafka = listener_pid(int(dep.env["KAFKA_BROKERS"].split(",")[0].rsplit(":", 1)[1]))
        os.kill(kafka, signal.SIGSTOP)
        try:
            # The buffered rows flush within BATCH_TIMEOUT_MS, meeting the trigger.
            longest = 0.0
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                longest = max(longest, await conn.fetchval(IDLE_IN_TRANSACTION, database))
                await asyncio.sleep(0.2)
        finally:
            os.kill(kafka, signal.SIGCONT)
        assert longest < 2.0, f"a transaction waited {longest:.1f} s idle on Kafka"
        await dep.wait_drained(limit_s=120, what="after Kafka came back")
        report = await dep.verify_exact()
        letters = await dead_letters(dep, f"{tick_topic}.dlq")
        assert {v for v, _ in letters.values()} >= set(refused)
        rows = await conn.fetchval("SELECT count(*) FROM tick_data WHERE symbol = 'REFUSE'")
        assert rows == 0
    finally:
        await conn.close()
    record_result(
        "rows the database refuses while Kafka is frozen",
        report,
        produced=VALID + len(refused),
        db_refused=len(refused),
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=None,
    )
