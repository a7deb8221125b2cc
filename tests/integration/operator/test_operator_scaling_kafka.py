"""Operator-mode autoscaling against the stack's real Kafka (the Kubernetes side is kmock).

A backlog on a 6-partition topic scales the Deployment up, capped at 6; committing the group's
offsets at the log end (what the recorder does once the rows are durable) drains the lag, and
the Deployment goes back to minReplicas only after the stabilization window.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from datarecorder_operator import kafkalag
from datarecorder_operator.handlers import OperatorConfig
from datarecorder_operator.lag import compute_lag

from tests.fixtures.stack import Stack, TopicFactory
from tests.integration.operator.emulator import running_operator

pytestmark = pytest.mark.integration

PARTITIONS = 6
WINDOW_S = 6


async def produce(brokers: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, b'{"symbol":"X","price":1.0,"volume":1}', partition=p)
            for p, count in per_partition.items()
            for _ in range(count)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def commit(brokers: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit offsets for `group` the way the recorder's consumer does after a durable write."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_read_offsets_reports_end_and_committed_offsets(
    stack: Stack, kafka_topics: TopicFactory, unique_name: str
) -> None:
    (topic,) = await kafka_topics("market.tick", partitions=PARTITIONS)
    brokers = stack.kafka_bootstrap
    await produce(brokers, topic, {p: 10 * (p + 1) for p in range(PARTITIONS)})
    group = f"g-{unique_name}"
    # Some partitions committed (0 fully, 1 half), the others never.
    await commit(brokers, group, {TopicPartition(topic, 0): 10, TopicPartition(topic, 1): 10})

    access = kafkalag.KafkaAccess(brokers=brokers.split(","))
    offsets = await kafkalag.read_offsets(access, group, [topic])
    assert [(o.partition, o.end, o.committed) for o in offsets] == [
        (0, 10, 10),
        (1, 20, 10),
        (2, 30, None),
        (3, 40, None),
        (4, 50, None),
        (5, 60, None),
    ]
    report = compute_lag(offsets, "earliest")
    assert report.total == 0 + 10 + 30 + 40 + 50 + 60
    assert report.partitions_with_lag == 5
    assert compute_lag(offsets, "latest").total == 10


async def test_a_lag_reader_reuses_its_clients_across_polls(
    stack: Stack, kafka_topics: TopicFactory, unique_name: str
) -> None:
    """One admin client and consumer per DataRecorder, not one per poll; and what it reads
    after new records and commits is fresh, not cached."""
    (topic,) = await kafka_topics("market.tick", partitions=2)
    brokers, group = stack.kafka_bootstrap, f"g-{unique_name}"
    await produce(brokers, topic, {0: 5, 1: 5})
    access = kafkalag.KafkaAccess(brokers=brokers.split(","))
    reader = kafkalag.LagReader()
    try:
        first = await reader.read(access, group, [topic])
        clients = (reader._admin, reader._consumer)
        await produce(brokers, topic, {0: 3, 1: 0})
        await commit(brokers, group, {TopicPartition(topic, 1): 5})
        second = await reader.read(access, group, [topic])
        assert (reader._admin, reader._consumer) == clients and clients[0] is not None
    finally:
        await reader.close()
    assert [(o.end, o.committed) for o in first] == [(5, None), (5, None)]
    assert [(o.end, o.committed) for o in second] == [(8, None), (5, 5)]
    # A changed access (new credentials, brokers) starts new clients.
    other = kafkalag.KafkaAccess(brokers=[*brokers.split(","), brokers.split(",")[0]])
    try:
        await reader.read(access, group, [topic])
        before = reader._admin
        await reader.read(other, group, [topic])
        assert reader._admin is not before
    finally:
        await reader.close()


async def test_backlog_scales_up_to_partitions_then_down_after_window(
    stack: Stack,
    kafka_topics: TopicFactory,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (topic,) = await kafka_topics("market.tick", partitions=PARTITIONS)
    brokers = stack.kafka_bootstrap
    group = f"g-{unique_name}"
    backlog = {p: 50 for p in range(PARTITIONS)}  # 300 records, target 10 a replica -> 30
    await produce(brokers, topic, backlog)
    # The group has committed a part already: partition 0 is fully done.
    await commit(brokers, group, {TopicPartition(topic, 0): 50})

    config = OperatorConfig(tick_seconds=0.3, resync_seconds=2, kafka_timeout_seconds=10)
    async with running_operator(tmp_path, monkeypatch, config=config) as cluster:
        await cluster.create(
            {
                "apiVersion": "datarecorder.dev/v1alpha1",
                "kind": "DataRecorder",
                "metadata": {"name": "scaled", "namespace": "md"},
                "spec": {
                    "image": "ghcr.io/example/datarecorder:0.1.0",
                    "kafka": {"brokers": brokers.split(","), "topics": [topic], "groupId": group},
                    "timescaledb": {"host": "db", "passwordSecret": {"name": "db"}},
                    "autoscaling": {
                        "enabled": True,
                        "mode": "operator",
                        "minReplicas": 1,
                        "maxReplicas": 20,  # more than partitions: the partition cap must win
                        "targetLagPerReplica": 10,
                        "pollIntervalSeconds": 1,
                        "scaleDownStabilizationSeconds": WINDOW_S,
                    },
                },
            }
        )

        async def replicas() -> int:
            dep = await cluster.get("Deployment", "md", "scaled-recorder")
            return int(((dep or {}).get("spec") or {}).get("replicas", 0))

        async def scaled_to(n: int) -> bool:
            return await replicas() == n

        await cluster.wait_for(lambda: scaled_to(PARTITIONS), within=30, what="scale up to 6")

        async def lag_in_status(expected: int) -> dict[str, Any] | None:
            dr = await cluster.get("DataRecorder", "md", "scaled")
            st = (dr or {}).get("status") or {}
            return st if (st.get("lag") or {}).get("timescaledb") == expected else None

        status = await cluster.wait_for(lambda: lag_in_status(250), within=15, what="lag 250")
        assert status["partitions"] == PARTITIONS
        assert status["lastScaleTime"]

        # Drain: the recorder made everything durable and committed the log end.
        await commit(brokers, group, {TopicPartition(topic, p): 50 for p in range(PARTITIONS)})
        await cluster.wait_for(lambda: lag_in_status(0), within=15, what="lag 0 in status")
        drained_at = asyncio.get_running_loop().time()

        # Still 6 inside the window (no flapping) ...
        await asyncio.sleep(1.5)
        assert await replicas() == PARTITIONS
        # ... and minReplicas once it has passed. The last recommendation of 6 came at most
        # one poll (1 s) plus a tick before the drained lag showed in status.
        await cluster.wait_for(lambda: scaled_to(1), within=WINDOW_S + 10, what="scale down")
        assert asyncio.get_running_loop().time() - drained_at >= WINDOW_S - 2
