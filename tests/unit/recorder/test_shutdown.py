"""The shutdown's decisions and mechanisms (issue 27): the deadline's budget, the exit codes,
retries that give up when their scope is abandoned, and steps bounded by the deadline.

The same paths run against real Kafka, PostgreSQL and S3 in
tests/integration/faults/test_shutdown_states.py (start-up stuck on each store, an outage
mid-run with buffered records).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.core.shutdown import (
    LEAVE_MAX_SEC,
    ExitCode,
    Outcome,
    budget,
    exit_code,
)
from recorder.runtime import supervise
from recorder.runtime.retry import Abandoned, RetryScope, Transient, enter_scope, retry_forever
from recorder.runtime.settings import Settings

# SHUTDOWN_TIMEOUT_SEC as the settings accept it: > 0, <= 3,600 (an operator's input).
deadlines = st.floats(min_value=0.0, max_value=3600.0, exclude_min=True, allow_nan=False)
HANG_GUARD_SEC = 10.0  # only against a hang of the test itself, not a speed bound


@given(deadlines)
def test_the_budget_shares_the_whole_deadline_and_keeps_most_for_flushing(d: float) -> None:
    share = budget(d)
    assert math.isclose(share.flush + share.leave, d, rel_tol=1e-9, abs_tol=1e-12)
    assert 0 <= share.leave <= min(LEAVE_MAX_SEC, d / 2)
    assert share.flush >= d / 2


@given(deadlines)
def test_the_budget_is_what_the_settings_accept(d: float) -> None:
    settings = Settings(_env_file=None, SHUTDOWN_TIMEOUT_SEC=d)
    assert budget(settings.SHUTDOWN_TIMEOUT_SEC).flush >= settings.SHUTDOWN_TIMEOUT_SEC / 2


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_a_deadline_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        budget(bad)


@given(
    started=st.booleans(),
    failed=st.booleans(),
    flushed=st.sampled_from([True, False, None]),
    cut=st.lists(st.sampled_from(["commit", "leave_group", "close_s3"]), max_size=2),
)
def test_exit_codes(started: bool, failed: bool, flushed: bool | None, cut: list[str]) -> None:
    code = exit_code(Outcome(started, failed, flushed, tuple(cut)))
    if failed:
        assert code is ExitCode.FAILED
    elif not started:
        assert code is ExitCode.NOT_STARTED
    elif flushed is True and not cut:
        assert code is ExitCode.OK
    else:
        assert code is ExitCode.CUT


def test_exit_codes_are_distinct_and_documented_values() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 130]


async def _never_heals() -> None:
    raise Transient("store unreachable")


# Each test enters its scope in a task of its own (as `Recorder.run` does in the recorder's),
# so that the scope reaches the tasks that task creates and no other test's.


async def test_abandoning_the_scope_ends_a_retry_in_its_backoff() -> None:
    async def main() -> tuple[RetryScope, asyncio.Task[None]]:
        s = enter_scope()
        return s, asyncio.create_task(retry_forever("connect", _never_heals, 3600))

    scope, task = await asyncio.create_task(main())
    await _until(lambda: "connect" in scope.waiting_for(), "the retry backs off")
    assert scope.waiting_for()["connect"] == "Transient: store unreachable"
    scope.abandon()
    with pytest.raises(Abandoned):
        await asyncio.wait_for(task, HANG_GUARD_SEC)
    assert scope.waiting_for() == {}


async def test_abandoning_the_scope_cancels_an_attempt_in_flight() -> None:
    entered = asyncio.Event()
    unwound = asyncio.Event()

    async def hangs() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    async def main() -> tuple[RetryScope, asyncio.Task[None], contextvars.Context]:
        s = enter_scope()
        task = asyncio.create_task(retry_forever("load_progress", hangs, 3600))
        return s, task, contextvars.copy_context()

    scope, task, context = await asyncio.create_task(main())
    await asyncio.wait_for(entered.wait(), HANG_GUARD_SEC)
    scope.abandon()
    with pytest.raises(Abandoned):
        await asyncio.wait_for(task, HANG_GUARD_SEC)
    assert unwound.is_set(), "the attempt was unwound before the retry gave up"
    # Nothing waits again in an abandoned scope: a new retry gives up before its attempt.
    calls: list[int] = []

    async def counted() -> None:
        calls.append(1)

    async def later() -> None:
        await retry_forever("store_start", counted, 3600)

    ctx_task = asyncio.create_task(later(), context=context)
    with pytest.raises(Abandoned):
        await ctx_task
    assert calls == []


async def test_cancelling_a_retry_in_a_scope_unwinds_its_attempt_first() -> None:
    entered = asyncio.Event()
    unwound = asyncio.Event()

    async def hangs() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()

    async def main() -> asyncio.Task[None]:
        enter_scope()
        return asyncio.create_task(retry_forever("write", hangs, 3600))

    task = await asyncio.create_task(main())
    await asyncio.wait_for(entered.wait(), HANG_GUARD_SEC)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound.is_set()


async def test_without_a_scope_retries_behave_as_before() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Transient("not yet")
        return "done"

    async def main() -> str:
        return await retry_forever("flaky", flaky, 0.01)

    assert await asyncio.create_task(main()) == "done"


async def test_within_cuts_a_step_that_ignores_its_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # like a library that waits for its own work in a finally

    assert not await supervise.within("leave_group", stubborn(), time.monotonic() + 0.05)
    release.set()
    assert await supervise.within("close_s3", asyncio.sleep(0), time.monotonic() + HANG_GUARD_SEC)


async def test_within_raises_what_the_step_raised_and_takes_no_time_past_the_deadline() -> None:
    async def broken() -> None:
        raise RuntimeError("close failed")

    with pytest.raises(RuntimeError, match="close failed"):
        await supervise.within("close_timescaledb", broken(), time.monotonic() + HANG_GUARD_SEC)
    # A deadline already passed cuts the step without running it to its end.
    assert not await supervise.within("commit", asyncio.sleep(3600), time.monotonic() - 1)


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_SEC
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def test_the_backstop_ends_a_process_stuck_past_the_deadline() -> None:
    """A process whose event loop is stuck (a thread, a blocking call) still ends at the
    deadline, with the exit code its outcome so far calls for (here: a flush not finished)."""
    script = (
        "import threading\n"
        "from recorder import cli\n"
        "from recorder.core.shutdown import Outcome\n"
        "cli._arm_backstop(0.1, lambda: Outcome(started=True, flushed=None))\n"
        "threading.Event().wait()\n"  # stuck for good: only the backstop ends it
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SEC * 3,
        check=False,
    )
    assert res.returncode == ExitCode.CUT, res.stderr
    assert "shutdown_backstop" in res.stdout + res.stderr
