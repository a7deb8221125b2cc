"""The tests of this folder run on native TimescaleDB (Apache edition) instead of PostgreSQL 15.

Owns one override: `stack` is the session's stack with TIMESCALEDB_* pointing at the
`timescale` service, so every fixture built on it (fresh_database, recorder_env, ...) and every
recorder started from them uses that server.
"""

from __future__ import annotations

import pytest

from tests.fixtures.stack import Stack


@pytest.fixture
def stack(stack: Stack) -> Stack:  # the session fixture of tests/fixtures/stack.py
    return stack.on_server("timescaledb-apache")
