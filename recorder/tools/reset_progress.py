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

Where to: `--to` (earliest, latest, an offset), `--to-time` (each partition's first record
stamped at or after the time, Kafka's offsets_for_times; the log end where none is), or
`--from-group OLD`: the lake's progress of consumer group OLD becomes this group's (a group
rename), after which OLD's progress objects of the topic are deleted (the lake sink refuses to
start while another group holds progress for its topics). The database's progress is not
scoped by group (`recorder_offsets` has one row per partition, whoever wrote it): it carries
on as it is, and the report says so.

A little over 400 lines: reading both stores, the group's membership and the log's bounds, and
the compare-and-set writes of each move read best beside the one plan they serve.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from recorder.core.offsets import TP
from recorder.core.reset_plan import LAKE, TIMESCALE, Change, Stored, at_time, carry_plan, plan
from recorder.kafka.options import client_options
from recorder.kafka.topic_ids import topic_ids
from recorder.runtime.settings import ConfigError, Settings, parse_rfc3339_ms
from recorder.sinks.lake.parquet import progress_key
from recorder.sinks.lake.store import Lake, StoredProgress, make_lake
from recorder.sinks.timescale import progress as progress_rows

APPLIED = "applied"
DB_NOT_SCOPED = (
    "timescaledb: progress is not scoped by consumer group (recorder_offsets holds one row "
    "per partition, whichever group wrote it): nothing to carry over, it carries on as it is"
)
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
    topic_id: str | None = None  # the topic's current ID (None: the cluster gives none)
    db_ids: dict[TP, str | None] | None = None  # the topic ID each database row counts

    def replaced(self, stored_id: str | None) -> bool:
        return None not in (stored_id, self.topic_id) and stored_id != self.topic_id

    def current(self) -> dict[str, dict[TP, Stored]]:
        out: dict[str, dict[TP, Stored]] = {}
        if self.db is not None:
            ids = self.db_ids or {}
            out[TIMESCALE] = {
                tp: Stored(off, replaced=self.replaced(ids.get(tp))) for tp, off in self.db.items()
            }
        if self.lake is not None:
            out[LAKE] = {
                tp: Stored(s.offset, s.flush_end, self.replaced(s.topic_id))
                for tp, s in self.lake.items()
            }
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


async def current_topic_id(settings: Settings, topic: str) -> str | None:
    """The topic's ID now (`recorder.kafka.topic_ids`): progress counting another was recorded from
    a log that was replaced, and may be rewound."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(settings))
    await consumer.start()
    try:
        return (await topic_ids(consumer._client, [topic])).get(topic)
    finally:
        await consumer.stop()


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


async def partition_owners(
    settings: Settings, tps: list[TP], group_id: str | None = None
) -> dict[TP, str]:
    """Which running member of the group (default: this one) each of `tps` is assigned to."""
    group_id = settings.KAFKA_GROUP_ID if group_id is None else group_id
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    groups: list[dict[str, Any]] = []
    for response in responses:
        for group in response.to_object()["groups"]:
            if group["error_code"] == GROUP_ID_NOT_FOUND:
                continue  # never joined (newer brokers say so instead of "Dead"): no members
            if group["error_code"] != 0:
                raise RuntimeError(
                    f"consumer group {group_id!r} cannot be described "
                    f"(error {group['error_code']}): its members are not known, so nothing "
                    "is written"
                )
            groups.append(group)
    return owners_of(groups, tps)


def _lake_key(settings: Settings, tp: TP, group: str | None = None) -> str:
    group_id = settings.KAFKA_GROUP_ID if group is None else group
    return progress_key(settings.S3_PREFIX, group_id, tp.topic, tp.partition)


async def offsets_at(settings: Settings, tps: list[TP], millis: int) -> dict[TP, int | None]:
    """Per partition, the offset of its first record stamped at or after `millis` (None: no
    such record), Kafka's offsets_for_times."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(settings))
    await consumer.start()
    try:
        found = await consumer.offsets_for_times(
            {TopicPartition(tp.topic, tp.partition): millis for tp in tps}
        )
    finally:
        await consumer.stop()
    return {
        TP(ktp.topic, ktp.partition): None if at is None else int(at.offset)
        for ktp, at in found.items()
    }


def time_targets(
    bounds: Mapping[TP, tuple[int, int]], found: Mapping[TP, int | None]
) -> dict[TP, int]:
    return {tp: at_time(found.get(tp), start, end) for tp, (start, end) in bounds.items()}


async def read(settings: Settings, lake: Lake | None, topic: str, partition: int | None) -> Read:
    bounds = await log_bounds(settings, topic, partition)
    tps = sorted(bounds)
    topic_id = await current_topic_id(settings, topic)
    db: dict[TP, int | None] | None = None
    db_ids: dict[TP, str | None] | None = None
    if settings.DB_WRITE_ENABLED:
        conn = await asyncpg.connect(**settings.db_dsn_kwargs())
        try:
            db = await progress_rows.load(conn, tps)
            db_ids = await progress_rows.load_identity(conn, tps)
        finally:
            await conn.close()
    stored = None
    if lake is not None:
        stored = {tp: await lake.read_progress(_lake_key(settings, tp)) for tp in tps}
    # Read last: a recorder that joins after this is fenced by the compare-and-sets instead.
    owners = await partition_owners(settings, tps)
    return Read(bounds, db, stored, owners, topic_id, db_ids)


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
                    moved = await progress_rows.compare_and_set(
                        conn, c.tp, c.stored.offset, c.new, forget_identity=True
                    )
                    out[(c.tp, c.sink)] = APPLIED if moved else CHANGED
        finally:
            await conn.close()
    for c in changes:
        if c.moves and c.sink == LAKE:
            assert lake is not None and was.lake is not None
            # The topic ID is forgotten and learned again: a reset accepts a recreated topic.
            forget = dataclasses.replace(was.lake[c.tp], topic_id=None)
            token = await lake.write_progress(_lake_key(settings, c.tp), forget, c.new)
            out[(c.tp, c.sink)] = APPLIED if token is not None else CHANGED
    return out


async def reset_progress(
    settings: Settings,
    topic: str,
    partition: int | None,
    to: str | None,
    write: bool,
    *,
    to_time: str | None = None,
    from_group: str | None = None,
) -> tuple[str, bool]:
    """The report, and whether everything asked for is done (or, in a dry run, allowed).
    Exactly one of `to`, `to_time`, `from_group` says where to."""
    if sum(x is not None for x in (to, to_time, from_group)) != 1:
        raise ConfigError("say where to: one of --to, --to-time, --from-group")
    if settings.S3_WRITE_ENABLED and settings.LAKE_FORMAT == "iceberg":
        # Its progress is in the tables' snapshot summaries, which this tool does not write yet.
        raise ConfigError(
            "LAKE_FORMAT=iceberg: reset-progress does not move the Iceberg tables' progress yet "
            "(see docs/iceberg.md); run it with S3_WRITE_ENABLED=false for the database only"
        )
    millis = None
    if to_time is not None:
        try:
            millis = parse_rfc3339_ms(to_time)
        except ValueError:
            raise ConfigError(
                f"--to-time {to_time!r}: expected an RFC 3339 date-time with a zone, "
                "e.g. 2026-12-01T00:00:00Z"
            ) from None
    if from_group is not None:
        if from_group == settings.KAFKA_GROUP_ID:
            raise ConfigError(f"--from-group {from_group!r} is this group (KAFKA_GROUP_ID)")
        if not settings.S3_WRITE_ENABLED:
            return f"{DB_NOT_SCOPED}\nnothing to carry over (S3_WRITE_ENABLED=false)", True
    lake = make_lake(settings) if settings.S3_WRITE_ENABLED else None
    try:
        if lake is not None:
            await lake.start()
        if from_group is not None:
            assert lake is not None
            return await carry_over(settings, lake, topic, partition, from_group, write)
        was = await read(settings, lake, topic, partition)
        target: str | dict[TP, int]
        if millis is not None:
            found = await offsets_at(settings, sorted(was.bounds), millis)
            target = time_targets(was.bounds, found)
        else:
            assert to is not None
            target = to
        changes = plan(was.current(), was.bounds, target, was.owners)
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


async def delete_object(settings: Settings, key: str) -> None:
    """Delete one object of the lake (the store's interface has no delete: progress objects
    are never deleted by a recorder)."""
    if settings.LOCAL_LAKE_DIR is not None:
        path = settings.LOCAL_LAKE_DIR / key
        path.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)
        return
    import aioboto3

    async with aioboto3.Session().client(
        "s3", region_name=settings.S3_REGION, endpoint_url=settings.S3_ENDPOINT_URL
    ) as s3:
        await s3.delete_object(Bucket=settings.S3_BUCKET, Key=key)


async def carry_over(
    settings: Settings, lake: Lake, topic: str, partition: int | None, old: str, write: bool
) -> tuple[str, bool]:
    """`--from-group OLD`: OLD's lake progress becomes this group's (compare-and-set on what
    this group's object held), then OLD's object is deleted if it still is what was read."""
    bounds = await log_bounds(settings, topic, partition)
    tps = sorted(bounds)
    current = {tp: await lake.read_progress(_lake_key(settings, tp)) for tp in tps}
    olds = {tp: await lake.read_progress(_lake_key(settings, tp, old)) for tp in tps}
    owners = await partition_owners(settings, tps)
    old_owners = await partition_owners(settings, tps, old)
    changes = carry_plan(
        {tp: Stored(s.offset, s.flush_end) for tp, s in current.items()},
        {tp: Stored(s.offset, s.flush_end) for tp, s in olds.items()},
        bounds,
        owners,
        old_owners,
        old,
    )
    head = [
        DB_NOT_SCOPED,
        f"{LAKE}: the progress of consumer group {old!r} → {settings.KAFKA_GROUP_ID!r}",
    ]
    if not changes:
        head.append(f"group {old!r} has no progress of {topic!r} in {lake.description}")
        return "\n".join(head), True
    if any(c.refusal is not None for c in changes) or not write:
        ok = not any(c.refusal is not None for c in changes)
        return "\n".join([*head, render(changes, None)]), ok
    done: dict[tuple[TP, str], str] = {}
    retired: list[str] = []
    for c in changes:
        if c.moves:
            forget = dataclasses.replace(current[c.tp], topic_id=None)
            token = await lake.write_progress(_lake_key(settings, c.tp), forget, c.new)
            done[(c.tp, c.sink)] = APPLIED if token is not None else CHANGED
        if done.get((c.tp, c.sink), APPLIED) != APPLIED:
            continue
        key = _lake_key(settings, c.tp, old)
        if await lake.read_progress(key) != olds[c.tp]:
            done[(c.tp, c.sink)] = CHANGED  # group OLD moved on meanwhile: keep both as they are
            continue
        await delete_object(settings, key)
        retired.append(key)
    tail = [f"deleted group {old!r}'s progress object {key}" for key in retired]
    report = render(changes, done)
    return "\n".join([*head, report, *tail]), all(v == APPLIED for v in done.values())
