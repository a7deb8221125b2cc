"""Fixtures of the fault scenarios: a `deployment` per test on the managed stack.

The wiring of the stack fixtures into one `Deployment`, and its cleanup, is the `deploy`
fixture of tests/integration/conftest.py.
"""

from __future__ import annotations

import pytest

from tests.fixtures.stack import Stack
from tests.integration.faults.harness import Deploy, Deployment

PARTITIONS = 6


@pytest.fixture
async def deployment(stack_faults: Stack, deploy: Deploy) -> Deployment:
    """Topics market.tick/market.orderbook (6 partitions each, plus their dead-letter topics),
    an empty database and bucket, and the environment of a recorder bound to them, on the
    managed stack (the scenarios stop and start its services)."""
    return await deploy(PARTITIONS, on=stack_faults)
