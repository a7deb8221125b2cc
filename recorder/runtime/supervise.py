"""Long-running tasks must not end quietly: a task that dies takes its work with it (a database
writer's partitions are never written again), so its failure stops the recorder, loudly, and a
restart replays from the stored progress. And the shutdown's steps must not outlive the deadline:
`within` bounds each one, whether or not it honours its cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from recorder.runtime import telemetry


def failure(tasks: Iterable[asyncio.Task[Any] | None]) -> str | None:
    """`name: Type: message` of the first task that ended with an exception, else None."""
    for task in tasks:
        if task is None or not task.done() or task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            return f"{task.get_name()}: {type(exc).__name__}: {exc}"
    return None


def on_failure(task: asyncio.Task[Any], callback: Callable[[str], None]) -> asyncio.Task[Any]:
    """Call `callback(reason)` if `task` ends with an exception (not when it is cancelled)."""

    def done(t: asyncio.Task[Any]) -> None:
        reason = failure([t])
        if reason is not None:
            telemetry.emit(telemetry.TASK_FAILED, task=t.get_name(), exc_info=t.exception())
            callback(reason)

    task.add_done_callback(done)
    return task


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of a step left behind, so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


async def within(step: str, work: Awaitable[Any], until: float) -> bool:
    """Run `work` until the monotonic time `until`. True when it finished (its exception, if
    any, is raised); False when the deadline cut it: it is then cancelled and *not* waited for,
    since a step may ignore or outlast its cancellation (aiokafka's `stop` waits for a running
    rebalance callback), and the shutdown must go on regardless."""
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, until - started))
    except BaseException:
        task.cancel()
        raise
    if task in done:
        if not task.cancelled():
            task.result()
        return True
    task.cancel()
    task.add_done_callback(_retrieve)
    telemetry.emit(
        telemetry.SHUTDOWN_STEP_CUT, step=step, seconds=round(time.monotonic() - started, 3)
    )
    return False
