"""Isolated inputs and outputs of one measurement: topics, a database, a bucket, the feed.

Owns naming (every scenario gets its own group, database and bucket, so none sees another's
rows), the pre-produced backlog, and the progress probes that say how much each store holds.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aioboto3
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.stack import REPO as REPO  # re-exported: bench/compare.py points it at another tree
from bench.stack import Stack
from recorder.devstack.recorder_proc import produce as run_produce
from recorder.runtime.settings import Settings
from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import make_lake

PARTITIONS = 12
SYMBOLS = 100  # spreads keys over the 12 partitions (20 symbols leave some nearly empty)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Topics:
    tick: str
    book: str | None

    @property
    def names(self) -> list[str]:
        return [self.tick] + ([self.book] if self.book else [])

    @property
    def csv(self) -> str:
        return ",".join(self.names)


def settings_for(env: Mapping[str, str]) -> Settings:
    """Recorder settings from an environment dict (the bench's own process env is not used)."""
    fields: dict[str, Any] = {k: v for k, v in env.items() if k in Settings.model_fields}
    return Settings(_env_file=None, **fields)


async def create_topics(stack: Stack, topics: Topics, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=stack.env["KAFKA_BROKERS"], request_timeout_ms=30000
    )
    await admin.start()
    try:
        # LogAppendTime: a record's Kafka timestamp is when the broker appended it (latency's t0).
        config = {"message.timestamp.type": "LogAppendTime"}
        res = await admin.create_topics(
            [NewTopic(n, partitions, 1, topic_configs=config) for n in topics.names]
        )
        errors = [t for t in res.topic_errors if t[1] != 0]
        if errors:
            raise RuntimeError(f"create_topics failed: {errors}")
        for _ in range(400):
            meta = await admin.describe_topics(topics.names)
            if all(
                t["error_code"] == 0
                and len(t["partitions"]) == partitions
                and all(p["leader"] >= 0 for p in t["partitions"])
                for t in meta
            ):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"topics {topics.names} got no leaders")
    finally:
        await admin.close()


async def delete_topics(stack: Stack, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=stack.env["KAFKA_BROKERS"], request_timeout_ms=30000
    )
    await admin.start()
    try:
        await admin.delete_topics(names)
    except Exception:  # best effort: the topics go with the throwaway stack anyway
        pass
    finally:
        await admin.close()


def dsn_kwargs(stack: Stack, database: str | None = None) -> dict[str, object]:
    e = stack.env
    return {
        "host": e["TIMESCALEDB_HOST"],
        "port": int(e["TIMESCALEDB_PORT"]),
        "user": e["TIMESCALEDB_USER"],
        "password": e["TIMESCALEDB_PASSWORD"],
        "database": database or e["TIMESCALEDB_DB"],
    }


async def create_database(stack: Stack, name: str) -> None:
    conn = await asyncpg.connect(**dsn_kwargs(stack), timeout=30)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{stack.env["TIMESCALEDB_USER"]}"')
    finally:
        await conn.close()


async def drop_database(stack: Stack, name: str) -> None:
    try:
        conn = await asyncpg.connect(**dsn_kwargs(stack), timeout=30)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        pass


def _s3_kwargs(stack: Stack) -> dict[str, str]:
    e = stack.env
    return {
        "endpoint_url": e["S3_ENDPOINT_URL"],
        "region_name": e["S3_REGION"],
        "aws_access_key_id": e["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": e["AWS_SECRET_ACCESS_KEY"],
    }


async def create_bucket(stack: Stack, name: str) -> None:
    async with aioboto3.Session().client("s3", **_s3_kwargs(stack)) as s3:
        await s3.create_bucket(Bucket=name)


async def drop_bucket(stack: Stack, name: str) -> None:
    try:
        async with aioboto3.Session().client("s3", **_s3_kwargs(stack)) as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    await s3.delete_objects(Bucket=name, Delete={"Objects": keys})
            await s3.delete_bucket(Bucket=name)
    except Exception:  # best effort: moto's memory goes with the stack
        pass


def recorder_env(
    stack: Stack, topics: Topics, *, database: str, bucket: str, group: str, **more: object
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(stack.env)
    env.update(
        KAFKA_TOPICS=topics.csv,
        TIMESCALEDB_DB=database,
        S3_BUCKET=bucket,
        KAFKA_GROUP_ID=group,
        PYTHONPATH=str(REPO),
    )
    for key, value in more.items():
        env[key.upper()] = str(value)
    return env


def produce(
    stack: Stack,
    topics: Topics,
    *,
    ticks: int,
    orderbooks: int,
    rate: float | None = None,
    duration: float | None = None,
    timeout: float = 1800,
) -> float:
    """`datarecorder produce` into `topics`; returns its wall time in seconds."""
    env = dict(os.environ)
    env.update(stack.env, KAFKA_TOPICS=topics.csv, PYTHONPATH=str(REPO))
    args = ["--ticks", str(ticks), "--orderbooks", str(orderbooks), "--symbols", str(SYMBOLS)]
    if rate is not None:
        args += ["--rate", str(rate)]
    if duration is not None:
        args += ["--duration", str(duration)]
    started = time.monotonic()
    run_produce(env, *args, timeout=timeout)
    return time.monotonic() - started


class Progress:
    """How many records of the topics each store holds durably, read from the sinks' own
    progress (the database's `recorder_offsets`, committed in the rows' transaction, and the
    lake's progress objects, written after the files): topics start at offset 0, so the sum of
    next offsets is the number of records made durable."""

    def __init__(self, stack: Stack, topics: Topics, env: Mapping[str, str]) -> None:
        self._stack = stack
        self._topics = topics
        self._settings = settings_for(env)
        self._database = env["TIMESCALEDB_DB"]
        self._conn: asyncpg.Connection | None = None
        self._lake = make_lake(self._settings)
        self._keys = [
            progress_key(self._settings.S3_PREFIX, self._settings.KAFKA_GROUP_ID, t, p)
            for t in topics.names
            for p in range(PARTITIONS)
        ]

    async def start(self) -> None:
        await self._lake.start()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        await self._lake.close()

    async def database(self) -> int:
        """Durable in PostgreSQL; a connection error counts as "unknown" (-1), not a failure."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    **dsn_kwargs(self._stack, self._database), timeout=5
                )
            value = await self._conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM recorder_offsets "
                "WHERE topic = ANY($1::text[])",
                self._topics.names,
            )
            return int(value)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self._conn = None
            return -1

    async def per_partition(self) -> dict[tuple[str, int], int]:
        assert self._conn is not None
        rows = await self._conn.fetch("SELECT topic, partition, next_offset FROM recorder_offsets")
        return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}

    async def lake(self) -> int:
        values = await asyncio.gather(*(self._lake.read_progress(k) for k in self._keys))
        return sum(v.offset or 0 for v in values)


async def end_offsets(stack: Stack, topics: Topics) -> dict[tuple[str, int], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.env["KAFKA_BROKERS"])
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics.names for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(v) for tp, v in ends.items()}
    finally:
        await consumer.stop()


async def paced_ticks(stack: Stack, topic: str, rate: float, duration: float) -> tuple[int, float]:
    """Ticks at `rate`/s for `duration` s, round-robin over the partitions, sent as one batch
    per partition every 20 ms (aiokafka's batch builder: a few µs a record, so the feed keeps
    its rate on two busy cores where one send() per record does not). Returns (sent, seconds)."""
    from aiokafka import AIOKafkaProducer

    from recorder.tools.produce import FeedSpec, tick_values

    producer = AIOKafkaProducer(
        bootstrap_servers=stack.env["KAFKA_BROKERS"], acks="all", max_batch_size=4 * 2**20
    )
    await producer.start()
    feed = tick_values(FeedSpec(symbols=SYMBOLS), time.time_ns() - 3_600 * 10**9, 1_000_000)
    sent = 0
    pending: list[asyncio.Future[object]] = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < duration:
            due = int(rate * elapsed) - sent
            if due > 0:
                batches = [producer.create_batch() for _ in range(PARTITIONS)]
                for i in range(due):
                    _, value = next(feed)
                    if (
                        batches[(sent + i) % PARTITIONS].append(
                            key=None, value=value, timestamp=None
                        )
                        is None
                    ):
                        raise RuntimeError("a 20 ms batch outgrew max_batch_size")
                for partition, batch in enumerate(batches):
                    if batch.record_count():
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                sent += due
            await asyncio.sleep(0.02)
        await asyncio.gather(*pending)
        return sent, time.monotonic() - started
    finally:
        await producer.stop()
