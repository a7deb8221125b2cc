"""The hot path's progress rows in `recorder_offsets`: read them, compare-and-set one, and the
topic ID (`recorder.kafka.topic_ids`) each row counts.

Owns the SQL of progress, shared by the sink (fenced progress, DESIGN rule 1) and by
`datarecorder reset-progress`, so both move a row by the same rule: only from what was read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import asyncpg

from recorder.core.offsets import TP


async def load(db: asyncpg.Pool | asyncpg.Connection, tps: Collection[TP]) -> dict[TP, int | None]:
    """The stored progress of `tps` (None: no row)."""
    ordered = list(tps)
    rows = await db.fetch(
        """SELECT o.topic, o.partition, o.next_offset FROM recorder_offsets o
           JOIN unnest($1::text[], $2::int[]) AS w(topic, partition)
           USING (topic, partition)""",
        [tp.topic for tp in ordered],
        [tp.partition for tp in ordered],
    )
    found = {TP(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
    return {tp: found.get(tp) for tp in ordered}


async def store_start(
    db: asyncpg.Pool | asyncpg.Connection, starts: Mapping[TP, int]
) -> dict[TP, int]:
    """Insert `starts` as the progress of partitions that have no row; return what is stored
    (another writer's start where it stored one first)."""
    ordered = list(starts)
    rows = await db.fetch(
        """WITH wanted AS (
               SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
                   AS w(topic, partition, next_offset)),
           added AS (
               INSERT INTO recorder_offsets (topic, partition, next_offset)
               SELECT topic, partition, next_offset FROM wanted
               ON CONFLICT (topic, partition) DO NOTHING
               RETURNING topic, partition, next_offset)
           SELECT topic, partition, next_offset FROM added
           UNION ALL
           SELECT o.topic, o.partition, o.next_offset FROM recorder_offsets o
           JOIN wanted USING (topic, partition)""",
        [tp.topic for tp in ordered],
        [tp.partition for tp in ordered],
        [starts[tp] for tp in ordered],
    )
    # The CTE's second branch does not see the first one's inserts (one snapshot): a row from
    # `added` is ours, one from the table was there before.
    found = {TP(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
    return {tp: found.get(tp, starts[tp]) for tp in ordered}


async def load_one(conn: asyncpg.Connection, tp: TP) -> int | None:
    value = await conn.fetchval(
        "SELECT next_offset FROM recorder_offsets WHERE topic = $1 AND partition = $2",
        tp.topic,
        tp.partition,
    )
    return None if value is None else int(value)


async def load_identity(
    db: asyncpg.Pool | asyncpg.Connection, tps: Collection[TP]
) -> dict[TP, str | None]:
    """The topic ID each partition's progress counts (None: no row, or not known yet)."""
    ordered = list(tps)
    rows = await db.fetch(
        """SELECT o.topic, o.partition, o.topic_id FROM recorder_offsets o
           JOIN unnest($1::text[], $2::int[]) AS w(topic, partition)
           USING (topic, partition)""",
        [tp.topic for tp in ordered],
        [tp.partition for tp in ordered],
    )
    found = {
        TP(r["topic"], r["partition"]): None if r["topic_id"] is None else str(r["topic_id"])
        for r in rows
    }
    return {tp: found.get(tp) for tp in ordered}


async def store_identity(db: asyncpg.Pool | asyncpg.Connection, ids: Mapping[TP, str]) -> None:
    """Record the topic ID of partitions whose row has none yet (a known one is never
    overwritten here: a different ID halts the partition instead)."""
    ordered = list(ids)
    await db.execute(
        """UPDATE recorder_offsets o SET topic_id = w.topic_id
           FROM unnest($1::text[], $2::int[], $3::uuid[]) AS w(topic, partition, topic_id)
           WHERE o.topic = w.topic AND o.partition = w.partition AND o.topic_id IS NULL""",
        [tp.topic for tp in ordered],
        [tp.partition for tp in ordered],
        [ids[tp] for tp in ordered],
    )


async def known_partitions(
    db: asyncpg.Pool | asyncpg.Connection, topics: Collection[str]
) -> dict[str, set[int]]:
    """The partitions of each topic that have a progress row."""
    rows = await db.fetch(
        "SELECT topic, partition FROM recorder_offsets WHERE topic = ANY($1::text[])",
        list(topics),
    )
    out: dict[str, set[int]] = {t: set() for t in topics}
    for r in rows:
        out[r["topic"]].add(int(r["partition"]))
    return out


async def compare_and_set(
    conn: asyncpg.Connection,
    tp: TP,
    expected: int | None,
    new: int,
    *,
    forget_identity: bool = False,
) -> bool:
    """Move the progress of `tp` to `new` if it still is `expected` (None: there is no row, and
    one is inserted only if still absent). True when this call moved it. `forget_identity`
    (reset-progress) clears the row's topic ID, learned again at the next take-over: a reset
    is how an operator accepts a recreated topic."""
    if expected is None:
        status = await conn.execute(
            """INSERT INTO recorder_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
               ON CONFLICT (topic, partition) DO NOTHING""",
            tp.topic,
            tp.partition,
            new,
        )
    else:
        status = await conn.execute(
            """UPDATE recorder_offsets SET next_offset = $3, updated_at = now(),
                   topic_id = CASE WHEN $5 THEN NULL ELSE topic_id END
               WHERE topic = $1 AND partition = $2 AND next_offset = $4""",
            tp.topic,
            tp.partition,
            new,
            expected,
            forget_identity,
        )
    return bool(status.endswith(" 1"))
