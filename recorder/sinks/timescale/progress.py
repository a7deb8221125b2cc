"""The hot path's progress rows in `recorder_offsets`: read them, compare-and-set one.

Owns the SQL of progress, shared by the sink (fenced progress, DESIGN rule 1) and by
`datarecorder reset-progress`, so both move a row by the same rule: only from what was read.
"""

from __future__ import annotations

from collections.abc import Collection

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


async def load_one(conn: asyncpg.Connection, tp: TP) -> int | None:
    value = await conn.fetchval(
        "SELECT next_offset FROM recorder_offsets WHERE topic = $1 AND partition = $2",
        tp.topic,
        tp.partition,
    )
    return None if value is None else int(value)


async def compare_and_set(conn: asyncpg.Connection, tp: TP, expected: int | None, new: int) -> bool:
    """Move the progress of `tp` to `new` if it still is `expected` (None: there is no row, and
    one is inserted only if still absent). True when this call moved it."""
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
            """UPDATE recorder_offsets SET next_offset = $3, updated_at = now()
               WHERE topic = $1 AND partition = $2 AND next_offset = $4""",
            tp.topic,
            tp.partition,
            new,
            expected,
        )
    return bool(status.endswith(" 1"))
