"""The measurement window shared by every peer run: from partitions assigned to the last record.

Owns what "ready" and "done" mean for a pipeline whose only common ground with the others is that
it is a Kafka consumer group writing somewhere: the group's state, a count, CPU at both ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiokafka.admin import AIOKafkaAdminClient

from bench.peers.cpu import process_cpu
from bench.peers.table import PeerRun
from bench.report import drain_rate, tail_bound
from bench.stack import Stack

PARTITIONS = 12  # bench.workload.PARTITIONS (the peer topics are the run's)
FILE_ROWS = 10_000  # rows a Parquet file, for the recorder (S3_BATCH_SIZE) and Benthos alike


async def timed_drain(
    label: str,
    store: str,
    count: Callable[[], Awaitable[int]],
    db_cpu: Callable[[], float | None],
    total: int,
    pid: int,
    alive: Callable[[], bool],
    tail: Callable[[], str],
    limit_s: float,
    ready: Callable[[], Awaitable[bool]],
    flush_timer_s: float | None = None,
) -> PeerRun:
    """Wait until `ready` (the consumer group has its partitions), then poll `count` until it
    reaches `total`; time and CPU from then to the last record (start-up left out). With
    `flush_timer_s` (a lake run: the last files wait that long) the rate is taken as
    bench.report.drain_rate says, from the count's curve."""
    started = time.monotonic()
    while not await ready():
        if not alive():
            raise RuntimeError(f"{label}: exited while starting; log:\n{tail()}")
        if time.monotonic() - started > 300:
            raise TimeoutError(f"{label}: not ready after 300 s; log:\n{tail()}")
        await asyncio.sleep(0.1)
    t0, n0, cpu0, db0 = time.monotonic(), await count(), process_cpu(pid), db_cpu()
    line: list[tuple[float, float]] = [(0.0, 0.0)]
    while True:
        if time.monotonic() - t0 > limit_s:
            raise TimeoutError(f"{label}: {await count()} of {total} records after {limit_s}s")
        if not alive():
            raise RuntimeError(f"{label}: exited; log:\n{tail()}")
        n = await count()
        now = time.monotonic()
        line.append((now - t0, n - n0))
        if n >= total:
            break
        await asyncio.sleep(0.25)
    cpu, db = process_cpu(pid), db_cpu()
    run = PeerRun(
        label,
        store,
        total - n0,
        now - t0,
        cpu - cpu0,
        None if db is None or db0 is None else db - db0,
    )
    if flush_timer_s is not None:
        waiting = tail_bound([run.rows], PARTITIONS, FILE_ROWS)
        measured = drain_rate(run.rows, run.seconds, line, flush_timer_s, waiting)
        run.timed, run.steady, run.rate_how = True, measured.value, measured.how
        run.window, run.line = measured.window, line
    return run


def consuming(stack: Stack, group: str) -> Callable[[], Awaitable[bool]]:
    """A probe: has `group` become Stable with members, i.e. have the partitions been assigned
    and fetching begun? The same signal for all three programs (each is a consumer group);
    their own readiness signals differ (the recorder's /ready answered late in a trial)."""

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.env["KAFKA_BROKERS"])
        await admin.start()
        try:
            (res,) = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        # DescribeGroups v0+: (error_code, group_id, state, protocol_type, protocol, members)
        _, _, state, _, _, members = res.groups[0][:6]
        return bool(state == "Stable" and members)

    return probe
