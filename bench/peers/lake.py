"""The Parquet-on-S3 peer runs: the recorder with its database off, and Benthos.

Owns how each is known to be done (the recorder's lake progress objects, Benthos' committed
offsets) and the read-back of both buckets (rows, sum of volume) that says they hold the same.
"""

from __future__ import annotations

from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from bench import workload as wl
from bench.peers import procs
from bench.peers.table import PeerRun
from bench.peers.window import consuming, timed_drain
from bench.stack import Stack
from recorder.devstack.recorder_proc import RecorderProcess


async def committed(stack: Stack, group: str, topic: str) -> int:
    """Offsets the group committed on `topic` (Benthos commits after its output's ack)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.env["KAFKA_BROKERS"])
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(0, om.offset) for tp, om in offsets.items() if tp.topic == topic)


async def lake_fingerprint(stack: Stack, bucket: str) -> tuple[object, ...]:
    """(rows, sum of volume) over every Parquet file in `bucket`."""
    import io

    import aioboto3
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    e = stack.env
    kwargs = {
        "endpoint_url": e["S3_ENDPOINT_URL"], "region_name": e["S3_REGION"],
        "aws_access_key_id": e["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": e["AWS_SECRET_ACCESS_KEY"],
    }  # fmt: skip
    rows = volume = 0
    async with aioboto3.Session().client("s3", **kwargs) as s3:
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith(".parquet"):
                    continue
                got = await s3.get_object(Bucket=bucket, Key=obj["Key"])
                async with got["Body"] as body:
                    table = pq.read_table(io.BytesIO(await body.read()), columns=["volume"])
                rows += table.num_rows
                volume += int(pc.sum(table["volume"]).as_py() or 0)
    return (rows, volume)


async def recorder_to_s3(
    stack: Stack, topic: str, total: int, logs: Path, limit_s: float
) -> PeerRun:
    bucket, database = wl.unique("psbk"), wl.unique("psdb")
    await wl.create_bucket(stack, bucket)
    await wl.create_database(stack, database)
    topics = wl.Topics(topic, None)
    group = wl.unique("psg")
    env = wl.recorder_env(
        stack, topics, database=database, bucket=bucket, group=group,
        DB_WRITE_ENABLED="false", S3_BATCH_TIMEOUT_SEC=5,
    )  # fmt: skip
    progress = wl.Progress(stack, topics, env)
    await progress.start()
    proc = RecorderProcess(env=env, log_path=logs / "peers-recorder-s3.log")
    proc.start(wait_ready=None)
    try:
        assert proc.proc is not None
        run = await timed_drain(
            "recorder", "Parquet/S3", progress.lake, lambda: None, total, proc.proc.pid,
            proc.alive, proc.tail, limit_s, consuming(stack, group), flush_timer_s=5.0,
        )  # fmt: skip
        run.fingerprint = await lake_fingerprint(stack, bucket)
        return run
    finally:
        proc.terminate(60) if proc.alive() else proc.ensure_stopped()
        await progress.close()
        await wl.drop_bucket(stack, bucket)
        await wl.drop_database(stack, database)


class IcebergTicks:
    """The recorder's Iceberg tick table as the bench reads it, through the recorder's own
    catalog code (blocking calls: run them in a thread)."""

    def __init__(self, env: dict[str, str], topic: str) -> None:
        from recorder.sinks.iceberg.catalog import Tables
        from recorder.sinks.iceberg.config import IcebergConfig

        self._tables = Tables(IcebergConfig.of(wl.settings_for(env)))
        self._topic = topic

    def committed(self) -> int:
        """Records of the topic the table's progress counts (0 before the table exists)."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        from recorder.runtime.settings import TopicKind

        try:
            table = self._tables.load(TopicKind.TICK)
        except (NoSuchTableError, NoSuchNamespaceError):
            return 0
        offsets = self._tables.progress(table).offsets
        return sum(n for tp, n in offsets.items() if tp.topic == self._topic)

    def snapshots_and_rows(self) -> tuple[int, tuple[object, ...]]:
        """(snapshots of the table, (rows, sum of volume) scanned through pyiceberg)."""
        import pyarrow.compute as pc

        from recorder.runtime.settings import TopicKind

        table = self._tables.load(TopicKind.TICK)
        scanned = table.scan(selected_fields=("volume",)).to_arrow()
        volume = int(pc.sum(scanned["volume"]).as_py() or 0)
        return len(table.snapshots()), (scanned.num_rows, volume)

    def close(self) -> None:
        self._tables.close()


async def recorder_to_iceberg(
    stack: Stack, topic: str, total: int, logs: Path, limit_s: float
) -> PeerRun:
    """The recorder with its database off and the lake as Iceberg tables (SQL catalog on the
    stack's PostgreSQL, warehouse in a fresh bucket): rows/s, CPU per row, commits/s."""
    import asyncio

    bucket, database = wl.unique("pibk"), wl.unique("pidb")
    await wl.create_bucket(stack, bucket)
    await wl.create_database(stack, database)
    topics = wl.Topics(topic, None)
    group = wl.unique("pig")
    env = wl.recorder_env(
        stack, topics, database=database, bucket=bucket, group=group,
        DB_WRITE_ENABLED="false", S3_BATCH_TIMEOUT_SEC=5, LAKE_FORMAT="iceberg",
    )  # fmt: skip
    ticks = IcebergTicks(env, topic)

    async def committed() -> int:
        return await asyncio.to_thread(ticks.committed)

    proc = RecorderProcess(env=env, log_path=logs / "peers-recorder-iceberg.log")
    proc.start(wait_ready=None)
    try:
        assert proc.proc is not None
        run = await timed_drain(
            "recorder, Iceberg", "Parquet/S3", committed, lambda: None, total,
            proc.proc.pid, proc.alive, proc.tail, limit_s, consuming(stack, group),
            flush_timer_s=5.0,
        )  # fmt: skip
        run.commits, run.fingerprint = await asyncio.to_thread(ticks.snapshots_and_rows)
        return run
    finally:
        proc.terminate(60) if proc.alive() else proc.ensure_stopped()
        ticks.close()
        await wl.drop_bucket(stack, bucket)
        await wl.drop_database(stack, database)


async def benthos_to_s3(
    stack: Stack, topic: str, total: int, logs: Path, limit_s: float
) -> PeerRun:
    bucket, group = wl.unique("pbbk"), wl.unique("pbsg")
    await wl.create_bucket(stack, bucket)
    e = stack.env
    env = {
        "BROKERS": e["KAFKA_BROKERS"], "TOPIC": topic, "GROUP": group, "BUCKET": bucket,
        "AWS_REGION": e["S3_REGION"], "S3_ENDPOINT_URL": e["S3_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": e["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": e["AWS_SECRET_ACCESS_KEY"],
    }  # fmt: skip
    peer = procs.start_benthos(workdir=logs / "peers", pipeline="parquet-s3.yaml", env=env)
    try:
        run = await timed_drain(
            "Benthos", "Parquet/S3", lambda: committed(stack, group, topic), lambda: None,
            total, peer.pid, peer.alive, peer.tail, limit_s, consuming(stack, group),
            flush_timer_s=5.0,
        )  # fmt: skip
        run.fingerprint = await lake_fingerprint(stack, bucket)
        return run
    finally:
        peer.stop()
        await wl.drop_bucket(stack, bucket)
