"""The peer measurements: the same tick backlog drained by the recorder and by each peer.

Owns the PostgreSQL runs and their order: every run gets a fresh database (migrated, the
backlog's day partitions created beforehand) and consumer group, one probe connection (whose own
CPU is not counted) and the window of window.py; the Parquet runs are in lake.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import workload as wl
from bench.peers import procs
from bench.peers.cpu import postmaster_of, server_cpu
from bench.peers.lake import benthos_to_s3, recorder_to_iceberg, recorder_to_s3
from bench.peers.table import PeerRun
from bench.peers.window import consuming, timed_drain
from bench.stack import Stack
from recorder.devstack.recorder_proc import RecorderProcess
from recorder.sinks.timescale.migrate import migrate

# The Connect sink reads a schema with every message: the same tick with its types spelled out
# (event time as Debezium's nanosecond timestamp). Built around the original bytes, unparsed.
_SCHEMA = (
    b'{"schema":{"type":"struct","name":"tick","optional":false,"fields":['
    b'{"field":"symbol","type":"string","optional":false},'
    b'{"field":"price","type":"double","optional":false},'
    b'{"field":"volume","type":"int64","optional":false},'
    b'{"field":"change","type":"double","optional":true},'
    b'{"field":"change_rate","type":"double","optional":true},'
    b'{"field":"timestamp","type":"int64","optional":false,"name":"io.debezium.time.NanoTimestamp"}'
    b']},"payload":'
)


def with_schema(value: bytes) -> bytes:
    return _SCHEMA + value + b"}"


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def prepare_database(stack: Stack, database: str) -> None:
    """A migrated database with day partitions around now (the feed's event times)."""
    await wl.create_database(stack, database)
    conn = await asyncpg.connect(**wl.dsn_kwargs(stack, database))
    try:
        await migrate(conn)
        today = datetime.now(UTC).date()
        for table in ("tick_data", "orderbook"):
            for delta in (-1, 0, 1, 2):
                day: date = today + timedelta(days=delta)
                await conn.execute("SELECT recorder_ensure_partition($1, $2)", table, day)
    finally:
        await conn.close()


class Probe:
    """One connection to the run's database: row count, the server's CPU without its own."""

    def __init__(self, conn: asyncpg.Connection, backend: int, postmaster: int | None) -> None:
        self.conn, self.backend, self.postmaster = conn, backend, postmaster

    @classmethod
    async def open(cls, stack: Stack, database: str) -> Probe:
        conn = await asyncpg.connect(**wl.dsn_kwargs(stack, database))
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return cls(conn, backend, postmaster_of(backend))

    async def rows(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM tick_data"))

    def db_cpu(self) -> float | None:
        return server_cpu(self.postmaster, self.backend) if self.postmaster else None

    async def fingerprint(self) -> tuple[object, ...]:
        row = await self.conn.fetchrow(
            "SELECT count(*), sum(volume), round(sum(price)::numeric, 2), min(time), max(time),"
            " count(DISTINCT symbol) FROM tick_data"
        )
        return tuple(row) if row else ()


async def _db_drain(
    label: str, probe: Probe, total: int, pid: int, alive: Callable[[], bool],
    tail: Callable[[], str], limit_s: float, ready: Callable[[], Awaitable[bool]],
) -> PeerRun:  # fmt: skip
    run = await timed_drain(
        label, "PostgreSQL", probe.rows, probe.db_cpu, total, pid, alive, tail, limit_s, ready
    )
    run.fingerprint = await probe.fingerprint()
    return run


async def reproduce_with_schema(stack: Stack, src: str, dst: str) -> int:
    """Copy `src` to `dst` (same partition and key) with a schema envelope per value."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.env["KAFKA_BROKERS"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.env["KAFKA_BROKERS"],
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await consumer.start()
    await producer.start()
    n = 0
    try:
        tps = [TopicPartition(src, p) for p in range(wl.PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        want = sum(ends.values())
        pending: list[asyncio.Future[object]] = []
        while n < want:
            data = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, msgs in data.items():
                for m in msgs:
                    value = with_schema(m.value or b"null")
                    pending.append(
                        await producer.send(dst, value=value, key=m.key, partition=tp.partition)
                    )
                    n += 1
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        await consumer.stop()
    return n


# --- one run per pipeline ----------------------------------------------------------------
async def _with_database(stack: Stack, run: Callable[[str, Probe], object], prefix: str) -> PeerRun:
    database = wl.unique(prefix)
    await prepare_database(stack, database)
    probe = await Probe.open(stack, database)
    try:
        result = await run(database, probe)  # type: ignore[misc]
        assert isinstance(result, PeerRun)
        return result
    finally:
        await probe.conn.close()
        await wl.drop_database(stack, database)


async def recorder_to_postgres(
    stack: Stack, topic: str, total: int, logs: Path, limit_s: float
) -> PeerRun:
    async def run(database: str, probe: Probe) -> PeerRun:
        group = wl.unique("pg")
        env = wl.recorder_env(
            stack,
            wl.Topics(topic, None),
            database=database,
            bucket=wl.unique("pbk"),
            group=group,
            S3_WRITE_ENABLED="false",
        )
        proc = RecorderProcess(env=env, log_path=logs / "peers-recorder.log")
        proc.start(wait_ready=None)
        try:
            assert proc.proc is not None
            pid = proc.proc.pid
            return await _db_drain(
                "recorder", probe, total, pid, proc.alive, proc.tail, limit_s,
                consuming(stack, group),
            )  # fmt: skip
        finally:
            proc.terminate(60) if proc.alive() else proc.ensure_stopped()

    return await _with_database(stack, run, "prdb")


def _pg_values(stack: Stack) -> dict[str, str]:
    e = stack.env
    return {
        "pg_host": e["TIMESCALEDB_HOST"],
        "pg_port": e["TIMESCALEDB_PORT"],
        "pg_user": e["TIMESCALEDB_USER"],
        "pg_password": e["TIMESCALEDB_PASSWORD"],
    }


async def benthos_to_postgres(
    stack: Stack, topic: str, total: int, logs: Path, limit_s: float
) -> PeerRun:
    async def run(database: str, probe: Probe) -> PeerRun:
        pg = _pg_values(stack)
        dsn = (
            f"postgres://{pg['pg_user']}:{pg['pg_password']}@{pg['pg_host']}:{pg['pg_port']}"
            f"/{database}?sslmode=disable"
        )
        group = wl.unique("pbg")
        env = {"BROKERS": stack.env["KAFKA_BROKERS"], "TOPIC": topic, "GROUP": group, "DSN": dsn}
        peer = procs.start_benthos(workdir=logs / "peers", pipeline="postgres.yaml", env=env)
        try:
            return await _db_drain(
                "Benthos", probe, total, peer.pid, peer.alive, peer.tail, limit_s,
                consuming(stack, group),
            )  # fmt: skip
        finally:
            peer.stop()

    return await _with_database(stack, run, "pbdb")


async def connect_to_postgres(
    stack: Stack, schema_topic: str, total: int, logs: Path, limit_s: float
) -> PeerRun:
    async def run(database: str, probe: Probe) -> PeerRun:
        name = wl.unique("bench-jdbc-")
        peer = procs.start_connect(
            workdir=logs / "peers" / "connect",
            brokers=stack.env["KAFKA_BROKERS"],
            topic=schema_topic,
            pg=_pg_values(stack),
            database=database,
            name=name,
        )
        try:
            return await _db_drain(
                "Kafka Connect", probe, total, peer.pid, peer.alive, peer.tail, limit_s,
                consuming(stack, f"connect-{name}"),  # a sink connector's group
            )  # fmt: skip
        finally:
            peer.stop()

    return await _with_database(stack, run, "pcdb")


def same_rows(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Equal fingerprints, but times within 1 µs: the recorder cuts nanoseconds to microseconds,
    the PostgreSQL JDBC driver (Connect) rounds them."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, datetime) and isinstance(y, datetime):
            if abs(x - y) > timedelta(microseconds=1):
                return False
        elif x != y:
            return False
    return True


def check_same_rows(runs: list[PeerRun]) -> None:
    """Each peer's rows against the recorder's in the same store: count, sums (and in
    PostgreSQL the time range and symbols)."""
    for r in runs:
        base = next((b for b in runs if b.label == "recorder" and b.store == r.store), None)
        if r is base:
            r.check = "reference"
        elif base is None:
            r.check = "not compared"
        elif same_rows(r.fingerprint, base.fingerprint):
            r.check = "same rows"
        else:
            r.check = f"DIFFERENT: {r.fingerprint} vs recorder {base.fingerprint}"


async def run_peers(
    stack: Stack, topic: str, total: int, logs: Path, *, peers: list[str], limit_s: float = 1800
) -> list[PeerRun]:
    """The recorder and each of `peers` ("benthos", "connect", "benthos-s3", "iceberg": the
    recorder's Iceberg lake beside its Parquet lake) on the tick topic, in turn."""
    runs: list[PeerRun] = []
    schema_topic = None
    try:
        if "connect" in peers:
            schema_topic = wl.unique("market.tick.schema")
            await wl.create_topics(stack, wl.Topics(schema_topic, None))
            _log(f"peers: re-producing {total:,} ticks with a schema envelope for Kafka Connect")
            copied = await reproduce_with_schema(stack, topic, schema_topic)
            if copied != total:
                raise RuntimeError(f"schema topic got {copied} of {total} ticks")
        _log("peers: recorder -> PostgreSQL (ticks only, S3 off)")
        runs.append(await recorder_to_postgres(stack, topic, total, logs, limit_s))
        if "benthos" in peers:
            _log("peers: Benthos kafka_franz -> sql_insert")
            runs.append(await benthos_to_postgres(stack, topic, total, logs, limit_s))
        if "connect" in peers and schema_topic:
            _log("peers: Kafka Connect + Debezium JDBC sink")
            runs.append(await connect_to_postgres(stack, schema_topic, total, logs, limit_s))
        if "benthos-s3" in peers:
            _log("peers: recorder -> Parquet on S3 (ticks only, database off)")
            runs.append(await recorder_to_s3(stack, topic, total, logs, limit_s))
            _log("peers: Benthos kafka_franz -> parquet_encode -> aws_s3")
            runs.append(await benthos_to_s3(stack, topic, total, logs, limit_s))
        if "iceberg" in peers:
            _log("peers: recorder -> Iceberg tables on S3 (ticks only, database off)")
            runs.append(await recorder_to_iceberg(stack, topic, total, logs, limit_s))
    finally:
        if schema_topic:
            await wl.delete_topics(stack, [schema_topic])
    check_same_rows(runs)
    return runs
