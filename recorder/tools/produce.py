"""A synthetic market feed (`datarecorder produce`): ticks and order books for N symbols.

Owns the generators (pure, seeded; `FEEDS`: one per record kind, with its share of the feed)
and a thin producer shell that paces them at a rate or a count.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec
from aiokafka import AIOKafkaProducer

from recorder.core.kinds import TopicKind, all_kinds
from recorder.kafka.options import client_options
from recorder.runtime.settings import Settings

_ENC = msgspec.json.Encoder()

# Malformed values of every kind the contract rejects; used by --invalid-ratio for tests.
POISON: tuple[bytes, ...] = (
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'{"symbol": 5930, "price": 1.0, "volume": 1}',
    b'{"symbol": "A", "volume": 1}',
    b'{"symbol": "A", "price": 1.0, "volume": 1, "timestamp": 1764133200}',
    b'{"symbol": "A", "price": NaN, "volume": 1}',
    b'{"symbol": "A", "price": Infinity, "volume": 1}',
    b'{"symbol": "A", "price": -1.0, "volume": 1}',
    b"not json at all",
    b'"a string"',
)


@dataclass(frozen=True)
class FeedSpec:
    symbols: int = 20
    seed: int = 42
    levels: int = 10


def symbols(n: int) -> list[str]:
    return [f"{5930 + i * 7:06d}" for i in range(n)]


def tick_values(spec: FeedSpec, start_ns: int, step_ns: int) -> Iterator[tuple[str, bytes]]:
    """Endless (symbol, JSON) ticks with random-walk prices, event time advancing by step_ns."""
    rng = random.Random(spec.seed)
    names = symbols(spec.symbols)
    prices = {s: 10_000.0 + 1000 * i for i, s in enumerate(names)}
    t = start_ns
    while True:
        s = names[rng.randrange(len(names))]
        base = prices[s]
        price = round(max(1.0, base + rng.choice((-1, 1)) * rng.randrange(0, 5) * 10.0), 2)
        prices[s] = price
        change = round(price - base, 2)
        doc = {
            "symbol": s,
            "price": price,
            "volume": rng.randrange(1, 500),
            "change": change,
            "change_rate": round(change / base * 100, 4),
            "timestamp": t,
        }
        t += step_ns
        yield s, _ENC.encode(doc)


def orderbook_values(spec: FeedSpec, start_ns: int, step_ns: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(spec.seed + 1)
    names = symbols(spec.symbols)
    t = start_ns
    while True:
        s = names[rng.randrange(len(names))]
        mid = 10_000.0 + 1000 * names.index(s) + rng.randrange(-50, 50) * 10.0
        doc = {
            "symbol": s,
            "timestamp": t,
            "bids": [
                {"price": mid - 10 * (i + 1), "quantity": rng.randrange(1, 5000)}
                for i in range(spec.levels)
            ],
            "asks": [
                {"price": mid + 10 * i, "quantity": rng.randrange(1, 5000)}
                for i in range(spec.levels)
            ],
        }
        t += step_ns
        yield s, _ENC.encode(doc)


@dataclass(frozen=True)
class Feed:
    """One kind's part of the synthetic feed."""

    values: Callable[[FeedSpec, int, int], Iterator[tuple[str, bytes]]]
    step_ns: int  # event time between two of its records
    # Its slot in the interleaving: record n of the feed is of this kind when
    # n % every == every - 1 (and it has records left); every == 1: any slot no other kind takes.
    every: int = 1


# Paced, ticks : order books = 10 : 1.
FEEDS: Final[Mapping[TopicKind, Feed]] = {
    TopicKind.TICK: Feed(tick_values, 1_000_000),
    TopicKind.ORDERBOOK: Feed(orderbook_values, 10_000_000, every=11),
}


def next_kind(
    n: int, feeds: Mapping[TopicKind, Feed], left: Callable[[TopicKind], bool]
) -> TopicKind | None:
    """The kind of the feed's record n: a kind whose slot n is, else the first kind of the
    table with records left (None: the feed is done). Pure."""
    for kind, feed in feeds.items():
        if feed.every > 1 and n % feed.every == feed.every - 1 and left(kind):
            return kind
    for kind in feeds:
        if feeds[kind].every == 1 and left(kind):
            return kind
    for kind in feeds:
        if left(kind):
            return kind
    return None


async def produce(
    settings: Settings,
    *,
    ticks: int | None = None,
    orderbooks: int | None = None,
    counts: Mapping[TopicKind, int | None] | None = None,
    rate: float | None = None,
    duration: float | None = None,
    spec: FeedSpec | None = None,
    invalid_ratio: float = 0.0,
    start_ns: int | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Send the feed to the configured topics; returns records sent per topic.

    With `rate`, records are paced (ticks : order books = 10 : 1) for `duration` seconds or
    until the counts are reached; without it, the counts are sent as fast as the broker takes.
    `counts`: records per kind (None: no limit), or `ticks` / `orderbooks`.
    """
    spec = spec or FeedSpec()
    topics = settings.topics()
    wanted = dict(counts or {TopicKind.TICK: ticks, TopicKind.ORDERBOOK: orderbooks})
    of_kind = {
        k.topic_kind: [t for t, tk in topics.items() if tk is k.topic_kind] for k in all_kinds()
    }
    start = start_ns if start_ns is not None else time.time_ns() - 3_600 * 1_000_000_000
    values = {kind: feed.values(spec, start, feed.step_ns) for kind, feed in FEEDS.items()}
    rng = random.Random(spec.seed + 2)
    sent = {t: 0 for t in topics}
    done = dict.fromkeys(FEEDS, 0)  # records sent per kind

    def left(kind: TopicKind) -> bool:
        limit = wanted.get(kind)
        return bool(of_kind[kind]) and (limit is None or done[kind] < limit)

    producer = AIOKafkaProducer(
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
        compression_type=None,
        **client_options(settings),
    )
    await producer.start()
    began = time.monotonic()
    pending: list[asyncio.Future[object]] = []
    try:
        n = 0
        while True:
            kind = next_kind(n, FEEDS, left)
            if kind is None:
                break
            topic = of_kind[kind][n % len(of_kind[kind])]
            key, value = next(values[kind])
            if invalid_ratio and rng.random() < invalid_ratio:
                value = POISON[rng.randrange(len(POISON))]
            pending.append(await producer.send(topic, value=value, key=key.encode()))
            sent[topic] += 1
            done[kind] += 1
            n += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate:
                elapsed = time.monotonic() - began
                if duration is not None and elapsed >= duration:
                    break
                ahead = n / rate - elapsed
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
            if progress and n % 100_000 == 0:
                print(f"sent {n} records ({n / (time.monotonic() - began):.0f}/s)", flush=True)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
