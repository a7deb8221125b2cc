"""`datarecorder reset-progress`: move the sinks' stored progress of partitions, explicitly.

The resolution of a halted partition (progress beyond the log end after a topic was deleted and
recreated, or an unclean leader election): an operator decides where recording resumes. A dry
run by default: it prints, per partition and sink, the stored progress, the log's bounds and
the new value; `--apply` writes it (the database's `recorder_offsets` row, the lake's progress
object for this consumer group, each by compare-and-set on what was read). A running recorder
notices the changed progress within 30 s and resumes the partition there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from recorder.core.offsets import TP
from recorder.kafka_options import client_options
from recorder.settings import ConfigError, Settings
from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import make_lake


@dataclass(frozen=True)
class Change:
    tp: TP
    sink: str
    current: int | None
    new: int
    log_start: int
    log_end: int


def target_offset(to: str, log_start: int, log_end: int) -> int:
    """Pure: the offset `--to` names for a partition whose log holds [log_start, log_end)."""
    if to == "earliest":
        return log_start
    if to == "latest":
        return log_end
    try:
        value = int(to)
    except ValueError:
        raise ConfigError(f"--to {to!r}: expected earliest, latest or an offset >= 0") from None
    if value < 0:
        raise ConfigError(f"--to {to!r}: expected earliest, latest or an offset >= 0")
    return value


def plan(
    current: Mapping[str, Mapping[TP, int | None]],
    bounds: Mapping[TP, tuple[int, int]],
    to: str,
) -> list[Change]:
    """Pure: one change per sink and partition (unchanged values included, for the report)."""
    changes = []
    for tp in sorted(bounds):
        start, end = bounds[tp]
        new = target_offset(to, start, end)
        for sink, progress in current.items():
            changes.append(Change(tp, sink, progress.get(tp), new, start, end))
    return changes


def render(changes: list[Change], applied: bool) -> str:
    rows = [("partition", "sink", "stored", "log start", "log end", "new")]
    for c in changes:
        stored = "-" if c.current is None else str(c.current)
        rows.append(
            (
                f"{c.tp.topic}[{c.tp.partition}]",
                c.sink,
                stored,
                str(c.log_start),
                str(c.log_end),
                str(c.new),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    verdict = (
        "applied" if applied else "dry run: nothing written (add --apply to write these values)"
    )
    return "\n".join([*lines, verdict])


async def log_bounds(
    settings: Settings, topic: str, partition: int | None
) -> dict[TP, tuple[int, int]]:
    # Subscribed without a group: start() then holds the topic's metadata.
    consumer = AIOKafkaConsumer(topic, enable_auto_commit=False, **client_options(settings))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ConfigError(f"--topic {topic!r}: no such topic on {settings.KAFKA_BROKERS}")
        if partition is not None and partition not in parts:
            raise ConfigError(
                f"--partition {partition}: topic {topic!r} has partitions 0..{max(parts)}"
            )
        wanted = [TopicPartition(topic, p) for p in sorted(parts) if partition in (None, p)]
        starts = await consumer.beginning_offsets(wanted)
        ends = await consumer.end_offsets(wanted)
    finally:
        await consumer.stop()
    return {TP(tp.topic, tp.partition): (int(starts[tp]), int(ends[tp])) for tp in wanted}


async def _db_progress(settings: Settings, tps: list[TP]) -> dict[TP, int | None]:
    import asyncpg

    conn = await asyncpg.connect(**settings.db_dsn_kwargs())
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM recorder_offsets WHERE topic = $1",
            tps[0].topic,
        )
    finally:
        await conn.close()
    found = {int(r["partition"]): int(r["next_offset"]) for r in rows}
    return {tp: found.get(tp.partition) for tp in tps}


async def _db_apply(settings: Settings, changes: list[Change]) -> None:
    import asyncpg

    conn = await asyncpg.connect(**settings.db_dsn_kwargs())
    try:
        async with conn.transaction():
            for c in changes:
                await conn.execute(
                    """INSERT INTO recorder_offsets (topic, partition, next_offset)
                       VALUES ($1, $2, $3) ON CONFLICT (topic, partition)
                       DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()""",
                    c.tp.topic,
                    c.tp.partition,
                    c.new,
                )
    finally:
        await conn.close()


async def reset_progress(
    settings: Settings, topic: str, partition: int | None, to: str, apply: bool
) -> str:
    bounds = await log_bounds(settings, topic, partition)
    tps = sorted(bounds)
    current: dict[str, dict[TP, int | None]] = {}
    if settings.DB_WRITE_ENABLED:
        current["timescaledb"] = await _db_progress(settings, tps)
    lake = make_lake(settings) if settings.S3_WRITE_ENABLED else None
    keys = {
        tp: progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tp.topic, tp.partition)
        for tp in tps
    }
    try:
        if lake is not None:
            await lake.start()
            stored = {tp: await lake.read_progress(keys[tp]) for tp in tps}
            current["s3"] = {tp: s.offset for tp, s in stored.items()}
        changes = plan(current, bounds, to)
        if apply:
            if settings.DB_WRITE_ENABLED:
                await _db_apply(settings, [c for c in changes if c.sink == "timescaledb"])
            if lake is not None:
                for c in changes:
                    if c.sink == "s3":
                        token = await lake.write_progress(keys[c.tp], stored[c.tp], c.new)
                        if token is None:
                            raise RuntimeError(
                                f"{keys[c.tp]} changed while resetting it (a recorder is "
                                "writing this partition): run the command again"
                            )
        return render(changes, apply)
    finally:
        if lake is not None:
            with contextlib.suppress(Exception):
                await lake.close()
