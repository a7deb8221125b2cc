"""Database edges of plain mode on PostgreSQL 15 (issue 11, item 8): a new day partition does not
wait behind analytics readers, a partition dropped behind the writer's back is made again, and a
read-only server (a standby, a demoted primary) is retried on fresh connections."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess, wait_exactly_once
from tests.support.ticks import NS_PER_DAY, days_ago_ns, send_ticks, wait_for

pytestmark = pytest.mark.integration


def partition_of(time_ns: int) -> str:
    day = datetime.fromtimestamp(time_ns // NS_PER_DAY * 86_400, tz=UTC)
    return f"tick_data_p{day:%Y%m%d}"


async def test_a_late_record_is_not_blocked_by_a_long_running_reader(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    """A reader's open transaction holds ACCESS SHARE on tick_data; a record for a day without a
    partition must still land (CREATE TABLE ... PARTITION OF waited for ACCESS EXCLUSIVE), and a
    new reader must not queue behind the partition's creation either."""
    (topic,) = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(
        database=fresh_database, topics=[topic], S3_WRITE_ENABLED="false", BATCH_TIMEOUT_MS=100
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()  # migrated, days ahead made
    dsn = stack.pg_dsn(fresh_database)
    reader, probe = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        reader_tx = reader.transaction()
        await reader_tx.start()
        await reader.fetchval("SELECT count(*) FROM tick_data")  # ACCESS SHARE until the end
        late = days_ago_ns(5)
        assert await probe.fetchval("SELECT to_regclass($1)", partition_of(late)) is None

        await send_ticks(stack.kafka_bootstrap, topic, [late])

        async def landed() -> bool:
            # A bounded wait: with the old function this query queued behind the creation.
            await probe.execute("SET statement_timeout = '2s'")
            return bool(await probe.fetchval("SELECT count(*) FROM tick_data") == 1)

        await wait_for(landed, 30, "the late record landed while the reader ran", rec.tail)
        assert await reader.fetchval("SELECT count(*) FROM tick_data") == 0  # its snapshot
        await reader_tx.rollback()
    finally:
        await reader.close()
        await probe.close()
        code, _ = rec.terminate()
    assert code == 0, rec.tail()


async def test_a_partition_dropped_while_known_is_made_again(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    """Another replica's retention (or an operator) drops a day the writer has cached as known;
    the next rows for that day must land instead of failing every flush."""
    (topic,) = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(
        database=fresh_database, topics=[topic], S3_WRITE_ENABLED="false", BATCH_TIMEOUT_MS=100
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        day = days_ago_ns(3)

        async def rows(n: int) -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM tick_data") == n)

        await send_ticks(stack.kafka_bootstrap, topic, [day])
        await wait_for(lambda: rows(1), 30, "the first row landed", rec.tail)
        await conn.execute(f'DROP TABLE "{partition_of(day)}"')

        await send_ticks(stack.kafka_bootstrap, topic, [day + 1, day + 2])
        await wait_for(lambda: rows(2), 30, "the rows after the drop landed", rec.tail)
        log = rec.tail(400)
        assert "partition_missing" in log and "flush_failed" not in log, log
        assert rec.health()[0] == 200, rec.tail()
    finally:
        await conn.close()
        code, _ = rec.terminate()
    assert code == 0, rec.tail()


async def test_a_read_only_server_is_retried_on_fresh_connections(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack_faults: Stack,
    tmp_path: Path,
) -> None:
    """`default_transaction_read_only` for the whole server (what a standby or a demoted primary
    answers: SQLSTATE 25006) while records arrive; once writable again, all land exactly once,
    without a flush given up and with the pool's connections replaced."""
    stack = stack_faults
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=2)
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        S3_WRITE_ENABLED="false",
        BATCH_TIMEOUT_MS=100,
        RETRY_MAX_BACKOFF_SEC=1,
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()

    async def assigned() -> bool:  # the starts are stored at assignment: writable until then
        return '"partitions_assigned"' in rec.tail(400)

    await wait_for(assigned, 60, "the recorder took its partitions", rec.tail)
    # A first tick recorded: the take-over's own writes (starts, topic IDs) are done, so the
    # read-only server is met by the writer (under load a take-over could still be storing
    # when the log already said "partitions_assigned", and met it there instead).
    await send_ticks(stack.kafka_bootstrap, topics[0], [days_ago_ns(0) - 1])
    wait_exactly_once(env, rec, timeout=60)
    admin = await asyncpg.connect(stack.pg_dsn())
    read_only_since = 0.0
    try:
        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")
        read_only_since = time.time()
        await send_ticks(stack.kafka_bootstrap, topics[0], [days_ago_ns(0) + i for i in range(50)])

        async def refused() -> bool:
            return "db_read_only" in rec.tail(400)

        await wait_for(refused, 30, "the recorder met the read-only server", rec.tail)
    finally:
        await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await admin.execute("SELECT pg_reload_conf()")
    try:
        wait_exactly_once(env, rec, timeout=120)
        log = rec.tail(1000)
        assert "flush_failed" not in log, log
        # The connections the writer used after the refusal were opened after it.
        fresh = await admin.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = $1 AND backend_start > to_timestamp($2)""",
            fresh_database,
            read_only_since,
        )
        assert fresh >= 1
        assert rec.health()[0] == 200, rec.tail()
    finally:
        await admin.close()
        code, _ = rec.terminate()
    assert code == 0, rec.tail()
