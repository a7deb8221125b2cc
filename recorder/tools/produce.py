"""A synthetic market feed (`datarecorder produce`): ticks and order books for N symbols.

Owns the generator (pure, seeded) and a thin producer shell that paces it at a rate or a count.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
from aiokafka import AIOKafkaProducer

from recorder.kafka.options import client_options
from recorder.runtime.settings import Settings, TopicKind

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


async def produce(
    settings: Settings,
    *,
    ticks: int | None,
    orderbooks: int | None,
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
    """
    spec = spec or FeedSpec()
    topics = settings.topics()
    tick_topics = [t for t, k in topics.items() if k is TopicKind.TICK]
    book_topics = [t for t, k in topics.items() if k is TopicKind.ORDERBOOK]
    start = start_ns if start_ns is not None else time.time_ns() - 3_600 * 1_000_000_000
    tick_gen = tick_values(spec, start, 1_000_000)
    book_gen = orderbook_values(spec, start, 10_000_000)
    rng = random.Random(spec.seed + 2)
    sent = {t: 0 for t in topics}
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
            books_left = orderbooks is None or sum(sent[t] for t in book_topics) < orderbooks
            want_book = bool(book_topics) and n % 11 == 10 and books_left
            if (
                not want_book
                and tick_topics
                and (ticks is None or sum(sent[t] for t in tick_topics) < ticks)
            ):
                topic = tick_topics[n % len(tick_topics)]
                key, value = next(tick_gen)
            elif book_topics and (
                orderbooks is None or sum(sent[t] for t in book_topics) < orderbooks
            ):
                topic = book_topics[n % len(book_topics)]
                key, value = next(book_gen)
            else:
                break
            if invalid_ratio and rng.random() < invalid_ratio:
                value = POISON[rng.randrange(len(POISON))]
            pending.append(await producer.send(topic, value=value, key=key.encode()))
            sent[topic] += 1
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
