"""Fixtures shared by the recorder and fault tests on the stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.integration.faults.harness import BASE_ENV, Deployment


@pytest.fixture
async def one_partition(
    stack: Stack,
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    unique_name: str,
) -> AsyncIterator[Deployment]:
    """A tick and a book topic of one partition each (with dead-letter topics), an empty
    database and bucket, and the environment of a recorder bound to them."""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=1, dlq=True)
    env = recorder_env(database=fresh_database, bucket=fresh_bucket, topics=topics, **BASE_ENV)
    dep = Deployment(unique_name, stack, env, topics, 1)
    try:
        yield dep
    finally:
        dep.stop_all()
