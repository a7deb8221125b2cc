"""Fault scenario: the dead-letter topic refuses writes (its max.message.bytes is too small).

A dead letter that cannot be written must pause only its partitions and make the pod unready
with the cluster's reason, retried with backoff; no crash loop. After the topic is fixed every
record lands exactly once, and the dead letters carry the original bytes, however large.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.faults.harness import Deployment, record_result
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


async def dead_letter_values(dep: Deployment, topic: str) -> dict[tuple[str, int, int], bytes]:
    """Every dead letter of `topic` by its source position -> its value."""
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
        out: dict[tuple[str, int, int], bytes] = {}
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
                    out[where] = msg.value or b""
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
    assert "MessageSizeTooLarge" in body or "too large" in body.lower(), body
    assert dep.metric(rec, "datarecorder_dead_letter_blocked_partitions") == 1
    assert "dead_letters: unhealthy" in dep.health(rec)
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
    letters = await dead_letter_values(dep, dlq_topic)
    big = [v for v in letters.values() if v.startswith(b'{"symbol": "BIG"')]
    assert big == [oversized], [len(v) for v in big]  # the original bytes, not a cut copy
    code, _ = dep.terminate(rec)
    assert code == 0, rec.tail()
    record_result(
        "DLQ refusing writes (max.message.bytes too small)",
        report,
        produced=VALID + 1,
        dead_letter_failures=int(dep.metric(rec, "datarecorder_dead_letter_failures_total")),
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
    )
