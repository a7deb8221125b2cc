"""`datarecorder reset-progress`: move the sinks' stored progress of partitions, explicitly.

The resolution of a halted partition (progress beyond the log end after a topic was deleted and
recreated or an unclean leader election, or below the log start with ON_LOG_TRUNCATION=halt):
an operator decides where recording resumes, with the recorder stopped. A dry run by default:
it prints, per partition and sink, the stored progress, the log's bounds, the new value and
what would happen; `--apply` writes the moves that are allowed. What is refused, and why, is
decided in `recorder.core.reset_plan`: partitions a running member of the consumer group is
assigned, moves that would make a store hold records twice (rewinds within the log), and lake
partitions with a pending flush. If anything is refused, nothing is written.

Every write is a compare-and-set on what was read, by the sinks' own code: the database row by
`recorder.sinks.timescale.progress.compare_and_set` (all of them in one transaction), the lake's
progress object by the store's conditional write (If-Match on the ETag read; it writes a new
generation, so the object's ETag never repeats an old one). A value that changed since it was
read is not overwritten: that partition reports "changed since read — rerun".
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from recorder.core.offsets import TP
from recorder.core.reset_plan import LAKE, TIMESCALE, Change, Stored, plan
from recorder.kafka_options import client_options
from recorder.settings import ConfigError, Settings
from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import Lake, StoredProgress, make_lake
from recorder.sinks.timescale import progress as progress_rows

APPLIED = "applied"
CHANGED = "changed since read — rerun"
# Group states in which the members hold the assignment the coordinator reports.
SETTLED_STATES = ("Stable", "Empty", "Dead")
GROUP_ID_NOT_FOUND = 69  # Kafka's error code


@dataclass(frozen=True)
class Read:
    """What `reset-progress` read before deciding: the log's bounds, each enabled sink's stored
    progress (the lake's with its token), and which running member is assigned each partition."""

    bounds: dict[TP, tuple[int, int]]
    db: dict[TP, int | None] | None
    lake: dict[TP, StoredProgress] | None
    owners: dict[TP, str]

    def current(self) -> dict[str, dict[TP, Stored]]:
        out: dict[str, dict[TP, Stored]] = {}
        if self.db is not None:
            out[TIMESCALE] = {tp: Stored(off) for tp, off in self.db.items()}
        if self.lake is not None:
            out[LAKE] = {tp: Stored(s.offset, s.flush_end) for tp, s in self.lake.items()}
        return out


def outcome_of(change: Change, applied: Mapping[tuple[TP, str], str] | None) -> str:
    if change.refusal is not None:
        return "refused"
    if not change.moves:
        return "unchanged"
    if applied is None:
        return "would move"
    return applied.get((change.tp, change.sink), "not written")


def render(changes: list[Change], applied: Mapping[tuple[TP, str], str] | None) -> str:
    """The report: a table, the refusals' reasons, and a verdict line. `applied` holds the
    outcome of each written move (None: nothing was written)."""
    rows = [("partition", "sink", "stored", "log start", "log end", "new", "outcome")]
    for c in changes:
        stored = "-" if c.stored.offset is None else str(c.stored.offset)
        if c.stored.flush_end is not None:
            stored += f" (flush to {c.stored.flush_end} pending)"
        name = f"{c.tp.topic}[{c.tp.partition}]"
        row = (name, c.sink, stored, str(c.log_start), str(c.log_end), str(c.new))
        rows.append((*row, outcome_of(c, applied)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    refused = [c for c in changes if c.refusal is not None]
    for c in refused:
        lines.append(f"refused {c.tp.topic}[{c.tp.partition}] {c.sink}: {c.refusal}")
    if refused:
        verdict = "refused: nothing written"
    elif applied is None:
        verdict = "dry run: nothing written (add --apply to write these values)"
    elif all(v == APPLIED for v in applied.values()):
        verdict = "applied"
    else:
        verdict = (
            "not all applied: a recorder or another reset moved some progress after it was "
            "read; those were left as they are: run the command again"
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


def owners_of(groups: list[dict[str, Any]], tps: list[TP]) -> dict[TP, str]:
    """Which running member each of `tps` is assigned to, from DescribeGroups' answer. A group
    in mid-rebalance reports no settled assignment: then every member may own every partition."""
    out: dict[TP, str] = {}
    wanted = set(tps)
    for group in groups:
        members = group.get("members") or []
        if not members:
            continue
        names = {
            m["member_id"]: f"member {m['member_id']} (client {m['client_id']}, host "
            f"{m['client_host']})"
            for m in members
        }
        if group.get("state") not in SETTLED_STATES:
            every = "; ".join(names.values())
            for tp in tps:
                out[tp] = f"{every} (the group is rebalancing)"
            continue
        for m in members:
            raw = m.get("member_assignment") or b""
            if not raw:
                continue
            assignment = ConsumerProtocolMemberAssignment.decode(raw)
            for topic, partitions in assignment.assignment:
                for p in partitions:
                    if TP(topic, p) in wanted:
                        out[TP(topic, p)] = names[m["member_id"]]
    return out


async def partition_owners(settings: Settings, tps: list[TP]) -> dict[TP, str]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([settings.KAFKA_GROUP_ID])
    finally:
        await admin.close()
    groups: list[dict[str, Any]] = []
    for response in responses:
        for group in response.to_object()["groups"]:
            if group["error_code"] == GROUP_ID_NOT_FOUND:
                continue  # never joined (newer brokers say so instead of "Dead"): no members
            if group["error_code"] != 0:
                raise RuntimeError(
                    f"consumer group {settings.KAFKA_GROUP_ID!r} cannot be described "
                    f"(error {group['error_code']}): its members are not known, so nothing "
                    "is written"
                )
            groups.append(group)
    return owners_of(groups, tps)


def _lake_key(settings: Settings, tp: TP) -> str:
    return progress_key(settings.S3_PREFIX, settings.KAFKA_GROUP_ID, tp.topic, tp.partition)


async def read(settings: Settings, lake: Lake | None, topic: str, partition: int | None) -> Read:
    bounds = await log_bounds(settings, topic, partition)
    tps = sorted(bounds)
    db: dict[TP, int | None] | None = None
    if settings.DB_WRITE_ENABLED:
        conn = await asyncpg.connect(**settings.db_dsn_kwargs())
        try:
            db = await progress_rows.load(conn, tps)
        finally:
            await conn.close()
    stored = None
    if lake is not None:
        stored = {tp: await lake.read_progress(_lake_key(settings, tp)) for tp in tps}
    # Read last: a recorder that joins after this is fenced by the compare-and-sets instead.
    owners = await partition_owners(settings, tps)
    return Read(bounds, db, stored, owners)


async def apply(
    settings: Settings, lake: Lake | None, was: Read, changes: list[Change]
) -> dict[tuple[TP, str], str]:
    """Write the allowed moves, each only over the value read; the outcome of each."""
    if any(c.refusal is not None for c in changes):
        raise ValueError("a plan with refusals is never applied")
    out: dict[tuple[TP, str], str] = {}
    db_moves = [c for c in changes if c.moves and c.sink == TIMESCALE]
    if db_moves:
        conn = await asyncpg.connect(**settings.db_dsn_kwargs())
        try:
            async with conn.transaction():
                for c in db_moves:
                    moved = await progress_rows.compare_and_set(conn, c.tp, c.stored.offset, c.new)
                    out[(c.tp, c.sink)] = APPLIED if moved else CHANGED
        finally:
            await conn.close()
    for c in changes:
        if c.moves and c.sink == LAKE:
            assert lake is not None and was.lake is not None
            token = await lake.write_progress(_lake_key(settings, c.tp), was.lake[c.tp], c.new)
            out[(c.tp, c.sink)] = APPLIED if token is not None else CHANGED
    return out


async def reset_progress(
    settings: Settings, topic: str, partition: int | None, to: str, write: bool
) -> tuple[str, bool]:
    """The report, and whether everything asked for is done (or, in a dry run, allowed)."""
    lake = make_lake(settings) if settings.S3_WRITE_ENABLED else None
    try:
        if lake is not None:
            await lake.start()
        was = await read(settings, lake, topic, partition)
        changes = plan(was.current(), was.bounds, to, was.owners)
        if any(c.refusal is not None for c in changes):
            return render(changes, None), False
        if not write:
            return render(changes, None), True
        done = await apply(settings, lake, was, changes)
        return render(changes, done), all(v == APPLIED for v in done.values())
    finally:
        if lake is not None:
            with contextlib.suppress(Exception):
                await lake.close()
