"""The health the probes read: the consumer's state, what keeps the pod from being ready (as
codes), and the background round that checks the stores and sets the health and lag metrics.

Owns `Health` (written by the coordinator, read by `recorder.http`) and the readiness problems
derived from the partition table and the sinks; no decision here changes what is recorded.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recorder.coordinator.ports import Clock, Source
from recorder.core.offsets import TP, partition_lag
from recorder.core.partitions import PartitionTable, Status
from recorder.core.readiness import Problem, halt_cause, partitions_problem
from recorder.runtime import metrics
from recorder.sinks.base import NOT_ANSWERING, Sink

# A consumer that has not returned from a fetch for this long is not "fetching" on /ready.
STALLED_FETCH_SEC = 60
HEALTH_INTERVAL_SEC = 2.0


@dataclass
class Health:
    clock: Clock = field(repr=False)
    step: str = "not started"  # where start-up is (a store's name, joining Kafka), or "running"
    started: bool = False
    stopping: bool = False
    consumer_error: str | None = None
    failed: str | None = None  # a long-running task died: the recorder stops and exits with 1
    last_fetch: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_fetch = self.clock.monotonic()

    def fetched(self) -> None:
        """A fetch returned (or the wait for Kafka ended: that is no stalled fetch either)."""
        self.last_fetch = self.clock.monotonic()

    def consumer_ok(self) -> bool:
        """Joined the group (not still waiting for Kafka), not failed, and fetching."""
        return (
            self.started
            and self.consumer_error is None
            and self.clock.monotonic() - self.last_fetch < STALLED_FETCH_SEC
        )


def problems(table: PartitionTable, sinks: Sequence[Sink]) -> dict[str, Problem]:
    """What keeps this pod from being ready, by part, as codes (the readiness endpoint shows
    them; each raw error is in the log event that reported it)."""
    out: dict[str, Problem] = {}
    held = table.held()
    if held:
        causes: list[tuple[str, int, str | None]] = []
        for tp in held:
            at = table.halted_at(tp)
            cause = halt_cause(at) if at is not None else "partition_held"
            causes.append((tp.topic, tp.partition, cause))
        halted = any(cause != "partition_held" for _, _, cause in causes)
        out["partitions"] = partitions_problem(
            "partition_halted" if halted else "partition_held", causes
        )
    blocked = table.blocked()
    if blocked:
        out["dead_letters"] = partitions_problem(
            "dead_letters_refused", ((tp.topic, tp.partition, None) for tp in blocked)
        )
    completing = table.completing()
    if completing:
        out["buffers"] = partitions_problem(
            "buffers_full_completing_range",
            ((tp.topic, tp.partition, None) for tp in completing),
        )
    for sink in sinks:
        health = sink.health()
        if not health.ok:
            code = "store_unreachable" if health.reason == NOT_ANSWERING else "writes_failing"
            out[sink.name] = Problem(code)
    return out


def report(
    health: Health,
    waiting_for: Mapping[str, Any],
    sinks: Sequence[Sink],
    table: PartitionTable,
) -> dict[str, Any]:
    """Where the recorder is, for the shutdown's log: starting (at which step, waiting for
    which requests) or running (partitions loading their progress, held or halted, sinks
    reporting an outage), and what the buffers hold."""
    started, step = health.started, health.step
    stage = next((getattr(s, "stage", None) for s in sinks if s.name == step), None)
    statuses = Counter(table.status(tp) for tp in table)
    partitions = {
        "assigning": statuses[Status.ASSIGNED],
        "held": statuses[Status.HELD],
        "halted": statuses[Status.HALTED],
    }
    return {
        "phase": "running" if started else "starting",
        "step": f"{step}: {stage}" if stage else step,
        "waiting_for": dict(waiting_for),
        "partitions": {k: n for k, n in partitions.items() if n},
        "unhealthy": [s.name for s in sinks if started and not s.healthy],
        "buffered": {s.name: s.buffered() for s in sinks},
    }


def dead_letter_part(table: PartitionTable) -> tuple[bool, str]:
    """Readiness part "dead_letters": not ready while a partition waits for its dead letters to
    be accepted (the reason is the cluster's refusal)."""
    blocked = table.blocked()
    if not blocked:
        return True, ""
    tps = sorted(blocked)
    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps[:5])
    more = f" and {len(tps) - 5} more" if len(tps) > 5 else ""
    reason = blocked[tps[0]].reason
    return False, f"{len(tps)} partition(s) paused ({names}{more}): {reason}"


async def watch(
    health: Health,
    sinks: Sequence[Sink],
    sources: Sequence[Source],
    fail: Callable[[str], None],
) -> None:
    """Every HEALTH_INTERVAL_SEC: a sink whose task died stops the recorder; the stores are
    checked; the health, lag and buffer metrics are set."""
    while True:
        for sink in sinks:
            reason = sink.failure()
            if reason is not None:
                fail(f"{sink.name} {reason}")
            await sink.check_health()
        metrics.SINK_HEALTHY.labels("consumer").set(1 if health.consumer_ok() else 0)
        update_lag(sinks, sources)
        for sink in sinks:
            metrics.BUFFER_RECORDS.labels(sink.name).set(sink.buffered())
            metrics.BUFFER_BYTES.labels(sink.name).set(sink.buffered_bytes())
        await health.clock.sleep(HEALTH_INTERVAL_SEC)


def update_lag(sinks: Sequence[Sink], sources: Sequence[Source]) -> None:
    for sink in sinks:
        total = 0
        progress = sink.progress()
        for source in sources:
            for tp in source.assignment():
                lag = partition_lag(source.stable_end(tp), progress.get(tp))
                metrics.PARTITION_LAG.labels(tp.topic, str(tp.partition), sink.name).set(lag)
                total += lag
        metrics.LAG.labels(sink.name).set(total)


def forget_lag(tps: Collection[TP], sinks: Sequence[Sink]) -> None:
    """No stale per-partition series for partitions given up."""
    for tp in tps:
        for sink in sinks:
            with contextlib.suppress(KeyError):
                metrics.PARTITION_LAG.remove(tp.topic, str(tp.partition), sink.name)
