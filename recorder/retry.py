"""The one retry rule of the pod: what is worth waiting for, and how long to wait.

Owns `is_transient` (one predicate for every store and Kafka: a configuration mistake or a
refused request never heals by waiting and fails loudly; unreachable, busy, restarting or
failing-over servers are waited for) and `retry_forever` (jittered exponential backoff capped
by RETRY_MAX_BACKOFF_SEC, through tenacity). Errors a caller raises to ask for a retry subclass
`Transient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from recorder import telemetry

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
)
# Configuration mistakes: never retried, whatever else they look like.
NEVER = (NoCredentialsError, NoRegionError, ParamValidationError)


class Transient(Exception):
    """Raised by a caller to have its attempt retried (e.g. a table partition that vanished)."""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth waiting for; data errors, refusals and misconfiguration are not."""
    if isinstance(exc, NEVER):
        return False
    if isinstance(exc, (Transient, OSError, TimeoutError, asyncio.TimeoutError, *PG_TRANSIENT)):
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


async def retry_forever(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    max_backoff: float,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `attempt` until it succeeds; transient errors back off (jittered, capped), others
    propagate. Cancellation stops it (that is how a revoke or a second signal abandons work)."""

    def before_sleep(state: object) -> None:
        outcome = getattr(state, "outcome", None)
        exc = outcome.exception() if outcome is not None else None
        if exc is not None:
            telemetry.emit(telemetry.STORE_RETRY, what=what, error=f"{type(exc).__name__}: {exc}")
            if on_failure is not None:
                on_failure(exc)

    async for try_ in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=0.1, max=max_backoff, jitter=0.1),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with try_:
            return await attempt()
    raise AssertionError("unreachable")  # pragma: no cover
