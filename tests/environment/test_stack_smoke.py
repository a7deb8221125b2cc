"""Smoke tests of the real services: each one answers real client calls over real connections.

Kafka (aiokafka: produce, group consume, commit, admin offsets), PostgreSQL (asyncpg), S3
(aioboto3), and that `stop`/`start` of one service keeps its port and data.
"""

from __future__ import annotations

import asyncio
import json

import aioboto3
import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from tests.fixtures.stack import Stack, TopicFactory

pytestmark = pytest.mark.integration

N_RECORDS = 60
PARTITIONS = 3


async def consume_exactly(consumer: AIOKafkaConsumer, n: int, limit_s: float = 30) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(limit_s):
        while len(got) < n:
            batches = await consumer.getmany(timeout_ms=500)
            got += [m.value for msgs in batches.values() for m in msgs]
    return got


async def test_kafka_group_round_trip_commits_offsets(
    stack: Stack, kafka_topics: TopicFactory, unique_name: str
) -> None:
    (topic,) = await kafka_topics("smoke", partitions=PARTITIONS)
    sent = [json.dumps({"symbol": f"S{i % 7}", "seq": i}).encode() for i in range(N_RECORDS)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(sent):
            await producer.send(topic, value, key=f"S{i % 7}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    group = f"g{unique_name}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        received = await consume_exactly(consumer, N_RECORDS)
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end_offsets = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(sent)
    assert sum(end_offsets.values()) == N_RECORDS
    assert sum(1 for off in end_offsets.values() if off > 0) > 1, "keys should spread"

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    # Every assigned partition is committed at its end, the empty ones at 0.
    assert {tp: om.offset for tp, om in committed.items()} == end_offsets


async def test_postgres_answers_queries_in_default_and_fresh_database(
    stack: Stack, fresh_database: str
) -> None:
    conn = await asyncpg.connect(stack.pg_dsn())
    try:
        assert await conn.fetchval("SELECT current_database()") == stack.env["TIMESCALEDB_DB"]
        assert (await conn.fetchval("SELECT version()")).startswith("PostgreSQL")
    finally:
        await conn.close()

    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        )
        assert owner == stack.env["TIMESCALEDB_USER"]
        await conn.execute("CREATE TABLE t (time timestamptz, symbol text, price float8)")
        await conn.executemany(
            "INSERT INTO t VALUES (now(), $1, $2)", [("005930", 71000.0), ("000660", 1.5)]
        )
        rows = await conn.fetch("SELECT symbol, price FROM t ORDER BY symbol")
        assert [tuple(r) for r in rows] == [("000660", 1.5), ("005930", 71000.0)]
    finally:
        await conn.close()


async def test_s3_put_list_get(stack: Stack, fresh_bucket: str) -> None:
    body = b"PAR1 not really parquet \x00\x01"
    key = "market-data/tick/year=2025/month=11/day=26/hour=05/part-0.parquet"
    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        buckets = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
        assert {stack.bucket, fresh_bucket} <= buckets
        await s3.put_object(Bucket=fresh_bucket, Key=key, Body=body)
        listed = await s3.list_objects_v2(Bucket=fresh_bucket, Prefix="market-data/tick/")
        assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(key, len(body))]
        got = await s3.get_object(Bucket=fresh_bucket, Key=key)
        async with got["Body"] as stream:
            assert await stream.read() == body


async def test_s3_conditional_puts_are_compare_and_set(stack: Stack, fresh_bucket: str) -> None:
    """The lake's progress objects rely on these answers (recorder/sinks/lake/store.py)."""
    from botocore.exceptions import ClientError

    def status(exc: ClientError) -> int:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])

    async with aioboto3.Session().client("s3", **stack.s3_client_kwargs()) as s3:
        first = await s3.put_object(Bucket=fresh_bucket, Key="p", Body=b"1", IfNoneMatch="*")
        with pytest.raises(ClientError) as exists:
            await s3.put_object(Bucket=fresh_bucket, Key="p", Body=b"x", IfNoneMatch="*")
        assert status(exists.value) == 412, exists.value.response
        second = await s3.put_object(Bucket=fresh_bucket, Key="p", Body=b"2", IfMatch=first["ETag"])
        with pytest.raises(ClientError) as stale:  # the first ETag no longer matches
            await s3.put_object(Bucket=fresh_bucket, Key="p", Body=b"x", IfMatch=first["ETag"])
        assert status(stale.value) == 412, stale.value.response
        with pytest.raises(ClientError) as missing:  # If-Match on a key that does not exist
            await s3.put_object(Bucket=fresh_bucket, Key="q", Body=b"x", IfMatch=second["ETag"])
        assert status(missing.value) in (404, 412), missing.value.response
        got = await s3.get_object(Bucket=fresh_bucket, Key="p")
        async with got["Body"] as stream:
            assert await stream.read() == b"2"
        assert got["ETag"] == second["ETag"]


@pytest.mark.faults
async def test_stop_start_keeps_port_and_data(
    stack_faults: Stack, fresh_database: str, fresh_bucket: str, kafka_topics: TopicFactory
) -> None:
    stack = stack_faults
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    await conn.close()
    stack.stop("postgres")
    with pytest.raises(OSError):
        await asyncpg.connect(stack.pg_dsn(fresh_database), timeout=5)
    stack.start("postgres")
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    assert await conn.fetchval("SELECT v FROM kept") == 42
    await conn.close()

    s3_kwargs = stack.s3_client_kwargs()
    async with aioboto3.Session().client("s3", **s3_kwargs) as s3:
        await s3.put_object(Bucket=fresh_bucket, Key="k", Body=b"kept")
    stack.stop("s3")
    no_retry = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2)
    async with aioboto3.Session().client("s3", config=no_retry, **s3_kwargs) as s3:
        with pytest.raises(EndpointConnectionError):
            await s3.list_objects_v2(Bucket=fresh_bucket)
    stack.start("s3")
    async with aioboto3.Session().client("s3", **s3_kwargs) as s3:
        got = await s3.get_object(Bucket=fresh_bucket, Key="k")
        async with got["Body"] as stream:
            assert await stream.read() == b"kept"

    (topic,) = await kafka_topics("kept", partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    await producer.send_and_wait(topic, b"before-restart")
    await producer.stop()
    await stack.astop("kafka", kill=True)  # the event-loop-friendly variants
    await stack.astart("kafka")
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        assert await consume_exactly(consumer, 1) == [b"before-restart"]
    finally:
        await consumer.stop()
