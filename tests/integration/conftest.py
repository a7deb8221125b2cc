"""Fixtures shared by the recorder and fault tests on the stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.integration.faults.harness import BASE_ENV, Deploy, Deployment


@pytest.fixture
async def deploy(
    stack: Stack,
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    unique_name: str,
) -> AsyncIterator[Deploy]:
    """`await deploy(partitions, on=stack, **env)`: a tick and a book topic of `partitions`
    partitions each (with dead-letter topics), an empty database and bucket, and the
    environment of a recorder bound to them (BASE_ENV, then `env`); its recorders are stopped
    after the test."""
    made: list[Deployment] = []

    async def make(partitions: int, *, on: Stack | None = None, **env: object) -> Deployment:
        topics = await kafka_topics(
            "market.tick", "market.orderbook", partitions=partitions, dlq=True
        )
        full = recorder_env(
            database=fresh_database, bucket=fresh_bucket, topics=topics, **{**BASE_ENV, **env}
        )
        made.append(Deployment(unique_name, on or stack, full, topics, partitions))
        return made[-1]

    try:
        yield make
    finally:
        for dep in made:
            dep.stop_all()


@pytest.fixture
async def one_partition(deploy: Deploy) -> Deployment:
    """A tick and a book topic of one partition each, and a recorder's environment for them."""
    return await deploy(1)
