"""Every record exactly once *as sent*: each field of each row in both stores compared with what
the test sent, on batches that mix every valid timestamp form, and on transactional topics.

The expected rows come from the records the test generated (tests/support/as_sent.py), never
from the recorder's decoder, so a decoder that rounds or shifts a field fails here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from recorder.core.records import Limits, RecordError, decode
from recorder.kafka.dlq import (
    HEADER_NULL_KEY,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
)
from recorder.runtime.settings import TopicKind
from tests.fixtures.stack import RecorderEnv, TopicFactory
from tests.support import as_sent
from tests.support.recorder_proc import RecorderProcess, http_get

pytestmark = pytest.mark.integration

NULL_KEY = b"\x00null-key"  # sent through a key serializer that turns it into no key


async def test_mixed_timestamp_forms_are_stored_as_sent(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Before the fix a batch mixing integer ns with absent timestamps went through a float64
    column: those rows held times rounded to 256 ns in both stores, with exact counts."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3, dlq=True)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=1,
    )
    records = as_sent.corpus((topics[0], topics[1]), 3, ticks=6000, books=600)
    await as_sent.send(env["KAFKA_BROKERS"], records)
    want = as_sent.wanted(records, topics[0], topics[1])
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        await as_sent.wait_stored(env, want, [rec])
    finally:
        rec.terminate()


def _lag(rec: RecorderProcess, sink: str) -> float | None:
    text = http_get(rec.url + "/metrics", 3.0)[1]
    for line in text.splitlines():
        if line.startswith("datarecorder_lag_records{") and f'sink="{sink}"' in line:
            return float(line.rpartition(" ")[2])
    return None


async def test_aborted_transactions_are_not_recorded_and_markers_leave_no_lag(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """100 ticks in an aborted transaction, 100 in a committed one: only the committed ones
    are recorded (before: all 200), and once they are, the partition's lag is 0 in both sinks
    and the group's committed offset is past the commit marker (before: a lag of 1 for good)."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=1, dlq=True)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=1,
    )
    aborted = as_sent.corpus((topics[0], topics[1]), 1, ticks=100, books=0, seed=1)
    committed = as_sent.corpus((topics[0], topics[1]), 1, ticks=100, books=0, seed=2)
    producer = AIOKafkaProducer(
        bootstrap_servers=env["KAFKA_BROKERS"], transactional_id=f"tx-{topics[0]}"
    )
    await producer.start()
    try:
        for batch, commit in ((aborted, False), (committed, True)):
            await producer.begin_transaction()
            for r in batch:
                await producer.send(r.topic, r.value, partition=0, timestamp_ms=r.kafka_ms)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()

    want = {
        "db.tick": as_sent.expected(committed, topics[0], micros=True),
        "lake.tick": as_sent.expected(committed, topics[0], micros=False),
    }
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        await as_sent.wait_stored(env, want, [rec])

        deadline = time.monotonic() + 60
        lags: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            lags = {sink: _lag(rec, sink) for sink in ("timescaledb", "s3")}
            if all(v == 0 for v in lags.values()):
                break
            await asyncio.sleep(0.5)
        assert all(v == 0 for v in lags.values()), (lags, rec.tail())
        got = await as_sent.stored(env)
        assert not got["db.book"] and not got["lake.book"]
    finally:
        rec.terminate()


async def _read_all(brokers: str, topic: str, n: int, limit_s: float = 60) -> list[Any]:
    """The first `n` records of `topic` (all partitions), read without a group."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + limit_s
        while len(out) < n and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(batch)
    finally:
        await consumer.stop()
    return out


async def test_dead_letters_carry_what_was_sent(
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Invalid records with and without keys, tombstones among them, beside valid ones: each
    dead letter holds the original key, value and source coordinates, and the reason the
    per-record decoder gives. A keyless tombstone (which producers cannot send again as it is)
    crashed the recorder on every restart before: its dead letter has an empty key and says so."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2, dlq=True)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=1,
    )
    records = as_sent.corpus((topics[0], topics[1]), 2, ticks=400, books=0, seed=3)
    await as_sent.send(env["KAFKA_BROKERS"], records)
    invalid: list[tuple[bytes | None, bytes | None]] = [
        (None, None),  # a keyless tombstone
        (b"k1", None),
        (None, b"\xff\xfe not json"),
        (b"k2", b'{"symbol": "A", "price": -1.0, "volume": 1}'),
        (None, b""),
        (b"", b"[1, 2]"),
    ]
    # A key serializer is the only way aiokafka sends a record with neither key nor value.
    producer = AIOKafkaProducer(
        bootstrap_servers=env["KAFKA_BROKERS"],
        acks="all",
        key_serializer=lambda k: None if k == NULL_KEY else k,
    )
    await producer.start()
    sent: dict[tuple[int, int], tuple[bytes | None, bytes | None, int]] = {}
    try:
        for i, (key, value) in enumerate(invalid * 2):
            meta = await producer.send_and_wait(
                topics[0], value, key=NULL_KEY if key is None else key, partition=i % 2
            )
            sent[(meta.partition, meta.offset)] = (key, value, meta.timestamp)
    finally:
        await producer.stop()

    want = {
        "db.tick": as_sent.expected(records, topics[0], micros=True),
        "lake.tick": as_sent.expected(records, topics[0], micros=False),
    }
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        await as_sent.wait_stored(env, want, [rec])
        letters = await _read_all(env["KAFKA_BROKERS"], topics[0] + ".dlq", len(sent))
        assert rec.proc is not None and rec.proc.poll() is None, rec.tail()
    finally:
        rec.terminate()
    got = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers[HEADER_TOPIC] == topics[0]
        got[(int(headers[HEADER_PARTITION]), int(headers[HEADER_OFFSET]))] = (
            letter.key,
            letter.value,
            headers,
        )
    assert got.keys() == sent.keys()
    for where, (key, value, kafka_ms) in sent.items():
        letter_key, letter_value, headers = got[where]
        with pytest.raises(RecordError) as err:
            decode(TopicKind.TICK, value, kafka_ms, Limits())
        assert headers[HEADER_REASON] == err.value.reason
        assert letter_value == value
        if key is None and value is None:
            assert letter_key == b"" and headers[HEADER_NULL_KEY] == "true"
        else:
            assert letter_key == key and HEADER_NULL_KEY not in headers
