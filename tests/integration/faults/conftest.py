"""Fixtures of the fault scenarios: a `deployment` per test on the managed stack.

Owns the wiring of the stack fixtures (topics, database, bucket, environment) into one
`Deployment`, and its cleanup: every recorder process and feed is ended after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.integration.faults.harness import BASE_ENV, Deployment

PARTITIONS = 6


@pytest.fixture
async def deployment(
    stack_faults: Stack,
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    unique_name: str,
) -> AsyncIterator[Deployment]:
    """Topics market.tick/market.orderbook (6 partitions each, plus their dead-letter topics),
    an empty database and bucket, and the environment of a recorder bound to them."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=PARTITIONS, dlq=True)
    env = recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics, **BASE_ENV)
    dep = Deployment(unique_name, stack_faults, env, topics, PARTITIONS)
    try:
        yield dep
    finally:
        dep.stop_all()
