"""The one retry rule of the pod: what is worth waiting for, and how long to wait.

Owns `is_transient` (one predicate for every store and Kafka: a configuration mistake or a
refused request never heals by waiting and fails loudly; unreachable, busy, restarting or
failing-over servers are waited for) and `retry_forever` (recorder.core.backoff's jittered
exponential backoff capped by RETRY_MAX_BACKOFF_SEC, through tenacity). Errors a caller raises
to ask for a retry subclass `Transient`. Also owns the retry scope: what the pod is waiting for right now, and the switch
that makes every wait give up at shutdown (`RetryScope.abandon`).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from recorder.core.backoff import Backoff
from recorder.runtime import telemetry

T = TypeVar("T")

# S3 answers a retry fixes: throttling and the server's own trouble (any 5xx too).
S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
# PostgreSQL: connection loss, shutdowns, a full server, and the conflicts a rerun resolves.
# A read-only server is a standby or a primary just demoted by a failover: fresh connections
# find the new primary.
PG_TRANSIENT = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ReadOnlySQLTransactionError,
    # A write that waited past its lock_timeout, or a session the server ended for idling in a
    # transaction (a frozen member): the transaction rolled back, a rerun decides again.
    asyncpg.LockNotAvailableError,
    asyncpg.IdleInTransactionSessionTimeoutError,
)
# A request that failed waits this long before its second attempt, twice as long per failure
# since (capped by RETRY_MAX_BACKOFF_SEC), plus up to RETRY_JITTER_SEC drawn at random.
RETRY_FIRST_BACKOFF_SEC = 0.1
RETRY_JITTER_SEC = 0.1
# The Iceberg SQL catalog (SQLAlchemy over psycopg2): a server that cannot be reached, restarts
# or drops the connection. Refusals (a missing table, a permission) are other classes. Looked up
# in sys.modules, not imported: SQLAlchemy costs a tenth of a second of CPU at every start and
# only LAKE_FORMAT=iceberg loads it; before it is loaded none of its errors can be raised.
SQL_TRANSIENT_NAMES = ("OperationalError", "InterfaceError")
# An Iceberg REST catalog that is busy or failing (429, 5xx; an unreachable one raises requests'
# errors, which are OSErrors). A commit answered 500/502/504 may or may not have applied
# (CommitStateUnknownException): the next attempt reads the table's progress again, which says
# whether it did. Refusals (400, 401, 403, 404, 409) are other classes. Looked up like
# SQLAlchemy's, in pyiceberg.exceptions once pyiceberg is loaded.
REST_TRANSIENT_NAMES = (
    "ServerError",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "CommitStateUnknownException",
)
# Configuration mistakes: never retried, whatever else they look like.
NEVER = (NoCredentialsError, NoRegionError, ParamValidationError)


class Transient(Exception):
    """Raised by a caller to have its attempt retried (e.g. a table partition that vanished)."""


class Abandoned(Exception):
    """`retry_forever` gave up because its scope was abandoned (the process is stopping). Not
    transient: nothing waits again. What it was doing is replayed from the stored progress."""


@dataclass
class RetryScope:
    """The retries of one recorder: which requests are waiting for a store right now (for the
    shutdown log and its state), and the switch that makes them all give up.

    Set for a task with `enter_scope`; tasks created from it afterwards share it (asyncio copies
    the context), including the tasks of the libraries it starts (aiokafka's coordinator, which
    runs the rebalance callbacks: a stop must reach a progress load retrying inside one)."""

    abandoned: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)

    def abandon(self) -> None:
        """From now on every `retry_forever` of the scope raises Abandoned instead of waiting:
        at once in a backoff, and during an attempt (which is cancelled)."""
        self.abandoned.set()

    def waiting_for(self) -> dict[str, str]:
        """`what` -> last error of the requests backing off now."""
        return {what: self.errors.get(what, "") for what, n in sorted(self.waiting.items()) if n}


_SCOPE: ContextVar[RetryScope | None] = ContextVar("retry_scope", default=None)


def enter_scope() -> RetryScope:
    """A new scope for the current task and the tasks it creates from now on."""
    scope = RetryScope()
    _SCOPE.set(scope)
    return scope


async def _until_abandoned(scope: RetryScope, what: str, work: Awaitable[T]) -> T:
    """`work`, unless the scope is abandoned first: then `work` is cancelled and Abandoned
    raised. Cancelling the caller cancels `work` too."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(scope.abandoned.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # Cancelled: `work` ends with us, unwound before we return, as if awaited directly.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        waiter.cancel()
    if not task.done():  # abandoned: the attempt is cancelled and unwound, then we give up
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Abandoned(f"{what}: given up, the recorder is stopping")
    return task.result()


def is_transient(exc: BaseException) -> bool:
    """True for errors worth waiting for; data errors, refusals and misconfiguration are not."""
    if isinstance(exc, NEVER):
        return False
    if isinstance(
        exc, (Transient, OSError, TimeoutError, asyncio.TimeoutError, *PG_TRANSIENT)
    ) or _loaded_transient(exc):
        return True
    if isinstance(exc, (KafkaConnectionError, BotoCoreError)):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or code in S3_TRANSIENT_CODES
    return False


def _loaded_transient(exc: BaseException) -> bool:
    """The SQL and REST catalogs' transient errors, from their modules if they are loaded."""
    for module, names in (
        ("sqlalchemy.exc", SQL_TRANSIENT_NAMES),
        ("pyiceberg.exceptions", REST_TRANSIENT_NAMES),
    ):
        errors = sys.modules.get(module)
        if errors is not None and isinstance(exc, tuple(getattr(errors, n) for n in names)):
            return True
    return False


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    max_backoff: float,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `attempt` until it succeeds; transient errors back off (jittered, capped), others
    propagate. Cancellation stops it (that is how a revoke or a second signal abandons work),
    and so does abandoning the task's retry scope (Abandoned: how a stop reaches retries in
    tasks the recorder does not own, such as a rebalance callback)."""
    scope = _SCOPE.get()
    backing_off = False
    backoff = Backoff(RETRY_FIRST_BACKOFF_SEC, max_backoff, RETRY_JITTER_SEC)

    def wait(state: RetryCallState) -> float:
        return backoff.delay(state.attempt_number)

    def before_sleep(state: object) -> None:
        nonlocal backing_off
        outcome = getattr(state, "outcome", None)
        exc = outcome.exception() if outcome is not None else None
        if exc is not None:
            error = f"{type(exc).__name__}: {exc}"
            telemetry.emit(telemetry.STORE_RETRY, what=what, error=error)
            if scope is not None:
                scope.errors[what] = error
                if not backing_off:
                    scope.waiting[what] += 1
                    backing_off = True
            if on_failure is not None:
                on_failure(exc)

    async def sleep(seconds: float) -> None:
        if scope is None:
            await asyncio.sleep(seconds)
        else:
            await _until_abandoned(scope, what, asyncio.sleep(seconds))

    try:
        async for try_ in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with try_:
                if scope is None:
                    return await attempt()
                if scope.abandoned.is_set():
                    raise Abandoned(f"{what}: not tried, the recorder is stopping")
                return await _until_abandoned(scope, what, attempt())
    finally:
        if backing_off and scope is not None:
            scope.waiting[what] -= 1
    raise AssertionError("unreachable")  # pragma: no cover
