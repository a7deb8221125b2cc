"""The commit policy (pure): which sink's durable progress becomes Kafka's committed offset.

Kafka's committed offset for the group is what lag tools, KEDA and the HPA read, so it follows
the hot path (DESIGN: "set to this hot-path progress after the transaction commits"); with the
database disabled it follows the lake. It never runs ahead of the sink it follows: only that
sink's recorded progress is ever committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

HOT_PATH: Final = "timescaledb"


def committing_sink(sinks: Sequence[str]) -> str:
    """The sink whose progress is committed: the hot path when enabled, else the first."""
    if not sinks:
        raise ValueError("no sink is enabled: nothing to commit progress for")
    return HOT_PATH if HOT_PATH in sinks else sinks[0]


def commit_offset(sink: str, offset: int, committing: str) -> int | None:
    """What a sink's new durable progress lets us commit: the offset when that sink is the
    committing one, else nothing (another sink's progress must not move the group's offset)."""
    return offset if sink == committing else None
