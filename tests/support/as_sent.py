"""Records as the tests send them and as the stores must hold them, every field.

Owns a generator of tick and order-book corpora that mix every valid timestamp form of the
message contract (integer ns, RFC 3339 with zones and 0-9 fraction digits, absent -> the Kafka
timestamp), the expected row of each record computed from what was sent (never by the
recorder's decoder), and readers of both stores (`recorder.tools.verify`'s, which only read).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from recorder.devstack.recorder_proc import RecorderProcess
from recorder.runtime.settings import Settings, TopicKind
from recorder.tools.verify import database_counters, lake_counters

NS = 1_000_000_000


@dataclass(frozen=True)
class Sent:
    """One record sent: topic, partition, value, Kafka timestamp (ms), and its fields."""

    topic: str
    partition: int
    value: bytes
    kafka_ms: int
    time_ns: int
    fields: tuple[
        Any, ...
    ]  # tick: symbol, price, volume, change, change_rate; book: symbol, bids, asks


def _rfc3339(rng: random.Random, time_ns: int) -> tuple[str, int]:
    """`time_ns` as an RFC 3339 string in a random zone with 0-9 fraction digits, and the
    ns it denotes (the digits not written are dropped)."""
    seconds, nanos = divmod(time_ns, NS)
    digits = rng.randint(0, 9)
    kept = nanos - nanos % 10 ** (9 - digits) if digits else 0
    fraction = f".{kept // 10 ** (9 - digits):0{digits}d}" if digits else ""
    offset = rng.choice([0, 0, rng.randint(-(23 * 60 + 59), 23 * 60 + 59)])
    local = datetime.fromtimestamp(seconds + offset * 60, UTC)
    zone = (
        rng.choice(["Z", "z", "+00:00"])
        if offset == 0
        else f"{'+' if offset > 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    )
    sep = rng.choice(["T", "t", " "])
    return f"{local:%Y-%m-%d}{sep}{local:%H:%M:%S}{fraction}{zone}", seconds * NS + kept


# The timestamp forms of each partition (by partition number modulo 3): one with no RFC 3339
# string at all (a batch of only integers and absent ones takes the columnar fast path), one
# with every form, one with strings and absent ones.
FORMS = (("int", "absent", "null"), ("int", "rfc3339", "absent", "null"), ("rfc3339", "absent"))


def _stamp(rng: random.Random, record: dict[str, Any], kafka_ms: int, partition: int) -> int:
    """Give `record` a timestamp of a random form; return the event time it means."""
    form = rng.choice(FORMS[partition % len(FORMS)])
    time_ns = kafka_ms * 1_000_000 - rng.randint(0, 3600 * NS)
    if form == "int":
        record["timestamp"] = time_ns
        return time_ns
    if form == "rfc3339":
        record["timestamp"], time_ns = _rfc3339(rng, time_ns)
        return time_ns
    if form == "null":
        record["timestamp"] = None
    return kafka_ms * 1_000_000


def _number(rng: random.Random) -> float | int:
    return rng.choice([rng.uniform(1e-8, 1e6), rng.randint(1, 2**53), 1e-8, 123.456789012345])


def corpus(
    topics: tuple[str, str],
    partitions: int,
    ticks: int,
    books: int,
    seed: int = 7,
    first: int = 0,
) -> list[Sent]:
    """Ticks and order books in a shuffled order, so fetched batches mix the forms (which
    forms: FORMS, by partition)."""
    rng = random.Random(seed)
    base_ms = 1_796_587_197_071
    out: list[Sent] = []
    for i in range(first, first + ticks + books):
        kafka_ms = base_ms + i
        partition = rng.randrange(partitions)
        symbol = f"{'T' if i < first + ticks else 'B'}{i}-{rng.choice(['', 'é', '日本', '𝄞'])}"
        record: dict[str, Any] = {"symbol": symbol}
        if i < first + ticks:
            record |= {"price": _number(rng), "volume": rng.choice([0, rng.randint(0, 2**63 - 1)])}
            for name in ("change", "change_rate"):
                how = rng.choice(["absent", "null", "value", "int"])
                if how != "absent":
                    record[name] = (
                        None
                        if how == "null"
                        else (rng.uniform(-1e3, 1e3) if how == "value" else rng.randint(-9, 9))
                    )
            time_ns = _stamp(rng, record, kafka_ms, partition)
            fields: tuple[Any, ...] = (
                symbol,
                float(record["price"]),
                int(record["volume"]),
                None if record.get("change") is None else float(record["change"]),
                None if record.get("change_rate") is None else float(record["change_rate"]),
            )
            topic = topics[0]
        else:
            sides = [
                [
                    {"price": _number(rng), "quantity": rng.choice([0, rng.uniform(0, 1e6)])}
                    for _ in range(rng.randint(0, 5))
                ]
                for _ in range(2)
            ]
            record |= {"bids": sides[0], "asks": sides[1]}
            time_ns = _stamp(rng, record, kafka_ms, partition)
            fields = (
                symbol,
                *(tuple((float(lv["price"]), float(lv["quantity"])) for lv in s) for s in sides),
            )
            topic = topics[1]
        value = msgspec.json.encode(record)
        out.append(Sent(topic, partition, value, kafka_ms, time_ns, fields))
    rng.shuffle(out)
    return out


async def send(brokers: str, records: Sequence[Sent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                r.topic, value=r.value, partition=r.partition, timestamp_ms=r.kafka_ms
            )
            for r in records
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


def expected(records: Sequence[Sent], topic: str, *, micros: bool) -> Counter[Hashable]:
    """What a store must hold for `topic`'s records: the database keeps µs (timestamptz,
    floored), the lake ns."""
    out: Counter[Hashable] = Counter()
    for r in records:
        if r.topic == topic:
            t = r.time_ns // 1000 if micros else r.time_ns
            out[(t, *r.fields)] += 1
    return out


def settings_of(env: dict[str, str]) -> Settings:
    known: dict[str, Any] = {k: v for k, v in env.items() if k in Settings.model_fields}
    return Settings(_env_file=None, **known)


AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@contextlib.contextmanager
def aws_credentials_of(env: dict[str, str]) -> Iterator[None]:
    """The S3 readers take credentials from the process environment, as the recorder does:
    lend them the recorder's for the read."""
    saved = {k: os.environ.get(k) for k in AWS_VARIABLES}
    os.environ.update({k: env[k] for k in AWS_VARIABLES if k in env})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def stored(env: dict[str, str]) -> dict[str, Counter[Hashable]]:
    """Every row of both stores, keyed by every field (the stores hold no Kafka offsets)."""
    settings = settings_of(env)
    in_db = await database_counters(settings)
    with aws_credentials_of(env):
        in_lake = await lake_counters(settings)
    return {
        "db.tick": in_db[TopicKind.TICK],
        "db.book": in_db[TopicKind.ORDERBOOK],
        "lake.tick": in_lake[TopicKind.TICK],
        "lake.book": in_lake[TopicKind.ORDERBOOK],
    }


def differences(want: Counter[Hashable], got: Counter[Hashable]) -> dict[str, list[Any]]:
    """Rows missing from a store and rows it holds that were not sent (first few of each)."""
    return {
        "missing": list((want - got).items())[:5],
        "unexpected": list((got - want).items())[:5],
        "counts": [sum(want.values()), sum(got.values())],
    }


def wanted(records: Sequence[Sent], tick: str, book: str) -> dict[str, Counter[Hashable]]:
    """What both stores must hold of every record sent, keyed as `stored` keys them."""
    return {
        "db.tick": expected(records, tick, micros=True),
        "db.book": expected(records, book, micros=True),
        "lake.tick": expected(records, tick, micros=False),
        "lake.book": expected(records, book, micros=False),
    }


def log_ends(records: Sequence[Sent]) -> dict[tuple[str, int], int]:
    """Each partition's log end after `records` were sent to new topics (offsets from 0)."""
    return dict(Counter((r.topic, r.partition) for r in records))


def ticks_wanted(records: Sequence[Sent], tick: str) -> dict[str, Counter[Hashable]]:
    """What both stores must hold of `tick`'s records, keyed as `stored` keys them."""
    return {
        "db.tick": expected(records, tick, micros=True),
        "lake.tick": expected(records, tick, micros=False),
    }


async def holds_exactly(env: dict[str, str], want: dict[str, Counter[Hashable]]) -> bool:
    """Whether each store named in `want` holds exactly those rows: none missing, none extra."""
    got = await stored(env)
    return all(not (w - got[k]) and not (got[k] - w) for k, w in want.items())


def fault_report(
    want: dict[str, Counter[Hashable]], got: dict[str, Counter[Hashable]]
) -> dict[str, Any]:
    """The fault report's entry for stores compared by content (`record_result`'s report)."""
    stores = []
    for key, expected_rows in want.items():
        # Named as `datarecorder verify` names them (the fault report counts the database's).
        name = key.replace("db.tick", "timescaledb.tick_data").replace("lake.", "parquet.")
        found = got[key]
        stores.append(
            {
                "store": name,
                "expected": sum(expected_rows.values()),
                "missing": sum((expected_rows - found).values()),
                "duplicated": sum(n - 1 for n in found.values() if n > 1),
                "unexpected": sum((found - expected_rows).values()),
            }
        )
    return {"ok": True, "stores": stores, "dead_letter_duplicates": 0}


async def wait_stored(
    env: dict[str, str],
    want: dict[str, Counter[Hashable]],
    recorders: Sequence[RecorderProcess],
    limit_s: float = 240,
) -> None:
    """Until each store named in `want` holds exactly its rows; fails the test with the
    differences (and the last recorder's log) after `limit_s`, or when a recorder died."""
    deadline = time.monotonic() + limit_s
    while True:
        got = await stored(env)
        diff = {k: differences(w, got[k]) for k, w in want.items()}
        if all(not d["missing"] and not d["unexpected"] for d in diff.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"stores differ from what was sent: {diff}\n{recorders[-1].tail()}")
        for rec in recorders:
            assert rec.proc is not None and rec.proc.poll() is None, rec.tail()
        await asyncio.sleep(1.0)
