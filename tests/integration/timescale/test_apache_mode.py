"""What is particular to the Apache edition: the mode `datarecorder migrate` chooses and says
why, hypertables for the rows, recorder-kept rollups (no continuous aggregates)."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from tests.fixtures.stack import RecorderEnv, Stack

pytestmark = pytest.mark.integration


def migrate_cli(env: dict[str, str]) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


async def test_migrate_chooses_the_apache_mode_and_says_why(
    fresh_database: str, recorder_env: RecorderEnv, stack: Stack
) -> None:
    env = recorder_env(database=fresh_database)
    first = migrate_cli(env)
    assert "mode: timescaledb-apache (timescaledb.license = apache" in first, first
    assert "0002_tables" in first and "0005" not in first, first  # 0005 is plain mode's
    again = migrate_cli(env)
    assert "mode: timescaledb-apache (the mode this database was first migrated in" in again
    assert "migrations applied: none pending" in again, again

    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        hypertables = await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1"
        )
        assert [r[0] for r in hypertables] == ["orderbook", "tick_data"]
        caggs = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
        )
        assert caggs == 0
        kinds = await conn.fetch(
            "SELECT relname, relkind::text FROM pg_class WHERE relname LIKE 'tick\\_1%' ORDER BY 1"
        )
        assert {r["relname"]: r["relkind"] for r in kinds} == {"tick_1hour": "v", "tick_1min": "v"}
    finally:
        await conn.close()
