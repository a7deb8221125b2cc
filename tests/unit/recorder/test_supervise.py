"""A long-running task that dies is reported; one that is cancelled or still running is not."""

from __future__ import annotations

import asyncio

from recorder.runtime import supervise


async def _boom() -> None:
    raise RuntimeError("disk on fire")


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_failure_names_the_task_and_the_error() -> None:
    dead = asyncio.create_task(_boom(), name="db-writer-2")
    alive = asyncio.create_task(_forever(), name="db-writer-1")
    await asyncio.gather(dead, return_exceptions=True)
    assert supervise.failure([None, alive, dead]) == "db-writer-2: RuntimeError: disk on fire"
    alive.cancel()
    await asyncio.gather(alive, return_exceptions=True)
    assert supervise.failure([alive]) is None


async def test_on_failure_calls_back_once_on_error_never_on_cancel() -> None:
    reasons: list[str] = []
    dead = supervise.on_failure(asyncio.create_task(_boom(), name="health"), reasons.append)
    cancelled = supervise.on_failure(asyncio.create_task(_forever(), name="x"), reasons.append)
    await asyncio.gather(dead, return_exceptions=True)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert reasons == ["health: RuntimeError: disk on fire"]
