"""Ticks with chosen event times into a Kafka topic, and polling a database for them: shared by
the database-mode tests (retention, partitions, read-only server)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer

NS_PER_DAY = 86_400 * 10**9


def days_ago_ns(days: float) -> int:
    return int((time.time() - days * 86_400) * 10**9)


async def send_ticks(
    bootstrap: str, topic: str, times_ns: Sequence[int], symbol: str = "005930"
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, t in enumerate(times_ns):
            doc = {"symbol": symbol, "price": 100.0 + i, "volume": 1, "timestamp": t}
            await producer.send_and_wait(topic, json.dumps(doc).encode())
    finally:
        await producer.stop()


async def wait_for(
    check: Callable[[], Awaitable[bool]], within: float, what: str, log: Callable[[], str]
) -> None:
    """Poll `check` until true; fail with `what` and the recorder's log tail otherwise."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not reached in {within}s\n{log()}")
