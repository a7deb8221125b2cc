"""The one retry rule (recorder.runtime.retry.is_transient): what every store and Kafka wait for."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from pyiceberg.exceptions import (
    BadRequestError,
    CommitFailedException,
    CommitStateUnknownException,
    ForbiddenError,
    OAuthError,
    ServerError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from requests.exceptions import ConnectionError as RequestsConnectionError

from recorder.runtime.retry import Transient, is_transient, retry_forever
from recorder.sinks.timescale.service import PartitionMissing


def s3_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.CannotConnectNowError("starting up"),
        asyncpg.ReadOnlySQLTransactionError("read-only"),
        asyncpg.DeadlockDetectedError("deadlock"),
        asyncpg.LockNotAvailableError("canceling statement due to lock timeout"),
        asyncpg.IdleInTransactionSessionTimeoutError(
            "terminating connection due to idle-in-transaction timeout"
        ),
        PartitionMissing("day gone"),
        KafkaConnectionError(),
        NotLeaderForPartitionError(),
        EndpointConnectionError(endpoint_url="http://s3"),
        s3_error("SlowDown", 503),
        s3_error("InternalError", 500),
        # An Iceberg REST catalog that is down, busy or failing; a commit whose fate is unknown
        # (the next attempt reads the progress again, which says whether it applied).
        RequestsConnectionError("connection refused"),
        ServiceUnavailableError("503"),
        ServerError("500"),
        TooManyRequestsError("429"),
        CommitStateUnknownException("502"),
    ],
    ids=type,
)
def test_waited_for(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad row"),
        asyncpg.UniqueViolationError("duplicate"),
        asyncpg.InvalidTextRepresentationError("bad input"),
        TopicAuthorizationFailedError(),
        NoCredentialsError(),
        s3_error("AccessDenied", 403),
        s3_error("NoSuchBucket", 404),
        BadRequestError("400"),
        UnauthorizedError("401"),
        ForbiddenError("403"),
        OAuthError("invalid_client"),
        # A conflict is the store's own loop (re-read, decide again), never a blind retry.
        CommitFailedException("409"),
    ],
    ids=type,
)
def test_not_waited_for(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_the_sql_catalogs_connection_errors_are_waited_for_its_refusals_are_not() -> None:
    """SQLAlchemy is looked up, not imported, by the retry rule: its errors once it is loaded."""
    from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

    assert is_transient(OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    assert is_transient(InterfaceError("SELECT 1", {}, ConnectionResetError()))
    assert not is_transient(IntegrityError("INSERT", {}, ValueError("duplicate")))


async def test_retry_forever_retries_transient_and_raises_the_rest() -> None:
    calls: list[int] = []
    failures: list[BaseException] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Transient("not yet")
        return "done"

    assert await retry_forever("flaky", flaky, 0.01, failures.append) == "done"
    assert len(calls) == 3 and len(failures) == 2

    async def broken() -> None:
        raise ValueError("never heals")

    with pytest.raises(ValueError):
        await asyncio.wait_for(retry_forever("broken", broken, 0.01), 5)
