"""Long-running tasks must not end quietly: a task that dies takes its work with it (a database
writer's partitions are never written again), so its failure stops the recorder, loudly, and a
restart replays from the stored progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from recorder import telemetry


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
