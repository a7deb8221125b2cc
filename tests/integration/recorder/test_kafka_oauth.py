"""The OAUTHBEARER login on a real broker: Kafka's own validator checks the recorder's tokens
against the JWKS of a token endpoint the test runs (tests/support/oauth_kafka.py).

Every record sent is stored as sent; a wrong client secret stops the recorder with the
endpoint's refusal named, never ready; tokens that live seconds are renewed and recording goes
on across the broker's closing of expired sessions; a secret revoked while recording stops the
recorder, named, with what it stored kept. (AWS MSK IAM cannot be tried here: no MSK;
its token is checked in tests/unit/recorder/test_kafka_oauth.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from recorder.devstack.recorder_proc import http_get
from tests.fixtures.stack import RecorderEnv
from tests.support import as_sent
from tests.support.oauth_kafka import OAuthKafka, oauth_kafka
from tests.support.recorder_proc import RecorderProcess

pytestmark = pytest.mark.integration

PARTITIONS = 2
SHORT_TOKEN_S = 5
# The short-token test records for this long: several token lifetimes, so several renewals
# and several sessions the broker closed.
LIFETIMES = 4


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthKafka]:
    yield from oauth_kafka(tmp_path_factory.mktemp("oauth-kafka"))


@pytest.fixture
async def topics(oauth: OAuthKafka, unique_name: str) -> AsyncIterator[list[str]]:
    """A tick and a book topic (and their dead-letter topics) on the OAuth broker."""
    names = [f"market.tick.{unique_name}", f"market.orderbook.{unique_name}"]
    admin = AIOKafkaAdminClient(bootstrap_servers=oauth.broker.plain, request_timeout_ms=30000)
    await admin.start()
    try:
        every = [*names, *(f"{n}.dlq" for n in names)]
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in every])
        yield names
    finally:
        await admin.close()


def _env(
    oauth: OAuthKafka,
    recorder_env: RecorderEnv,
    database: str,
    bucket: str,
    topics: list[str],
    secret: str | None = None,
) -> dict[str, str]:
    return recorder_env(
        database=database,
        bucket=bucket,
        topics=topics,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=1,
        **oauth.recorder_env(secret=secret),
    )


async def test_a_recorder_logged_in_with_oauthbearer_stores_every_record(
    oauth: OAuthKafka,
    topics: list[str],
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Before: KAFKA_SASL_MECHANISM=OAUTHBEARER was refused by the settings."""
    env = _env(oauth, recorder_env, fresh_database, fresh_bucket, topics)
    records = as_sent.corpus((topics[0], topics[1]), PARTITIONS, ticks=2000, books=200)
    await as_sent.send(oauth.broker.plain, records)
    issued = oauth.endpoint.issued
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        await as_sent.wait_stored(env, as_sent.wanted(records, topics[0], topics[1]), [rec])
    finally:
        rec.terminate()
    # Its clients logged in with the endpoint's tokens, a few (one per client), not one per
    # connection.
    assert 1 <= oauth.endpoint.issued - issued <= 10


async def test_a_wrong_client_secret_is_named_and_the_recorder_never_ready(
    oauth: OAuthKafka,
    topics: list[str],
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    wrong = "not-the-secret-0123456789"
    env = _env(oauth, recorder_env, fresh_database, fresh_bucket, topics, secret=wrong)
    refused = oauth.endpoint.refused
    rec = RecorderProcess(env, tmp_path / "recorder.log").start(wait_ready=None)
    try:
        readies: set[int] = set()
        deadline = time.monotonic() + 90
        while rec.alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not listening yet
                readies.add(http_get(rec.url + "/ready", 1.0)[0])
            await asyncio.sleep(0.2)
        assert not rec.alive(), f"a refused login should stop the recorder: {rec.tail()}"
        assert rec.wait(30) != 0
    finally:
        rec.ensure_stopped()
    assert 200 not in readies
    log = rec.log_path.read_text()
    named = f"OAuth token endpoint {oauth.endpoint.token_url} answered HTTP 401 (invalid_client)"
    assert named in log, rec.tail()
    assert wrong not in log and oauth.endpoint.client_secret not in log
    assert oauth.endpoint.refused > refused


async def test_short_lived_tokens_are_renewed_and_recording_goes_on(
    oauth: OAuthKafka,
    topics: list[str],
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """Tokens live SHORT_TOKEN_S: the broker ends each session when its token expires (the
    client does not re-authenticate), the client reconnects with a renewed token. Records sent
    in waves across several lifetimes are all stored."""
    env = _env(oauth, recorder_env, fresh_database, fresh_bucket, topics)
    oauth.endpoint.lifetime_s = SHORT_TOKEN_S
    try:
        rec = RecorderProcess(env, tmp_path / "recorder.log").start()
        try:
            first = oauth.endpoint.issued
            sent: list[as_sent.Sent] = []
            for wave in range(LIFETIMES):
                records = as_sent.corpus(
                    (topics[0], topics[1]), PARTITIONS, ticks=300, books=30, seed=wave
                )
                await as_sent.send(oauth.broker.plain, records)
                sent += records
                want = as_sent.wanted(sent, topics[0], topics[1])
                await as_sent.wait_stored(env, want, [rec])
                # The next wave goes out once the recorder's tokens have been renewed.
                renewed, deadline = oauth.endpoint.issued, time.monotonic() + 10 * SHORT_TOKEN_S
                while oauth.endpoint.issued == renewed:
                    assert rec.alive(), rec.tail()
                    assert time.monotonic() < deadline, "no token renewed"
                    await asyncio.sleep(0.2)
            assert oauth.endpoint.issued - first >= LIFETIMES
            assert http_get(rec.url + "/ready", 2.0)[0] == 200
        finally:
            rec.terminate()
    finally:
        oauth.endpoint.lifetime_s = 3600
    # The broker did end sessions whose token expired (else the test proved nothing).
    assert f"Connection at {oauth.broker.sasl} closed" in rec.log_path.read_text()


async def test_a_secret_revoked_while_recording_stops_the_recorder_naming_the_refusal(
    oauth: OAuthKafka,
    topics: list[str],
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    tmp_path: Path,
) -> None:
    """A client secret revoked (rotated) under a running recorder: once its token expires the
    next login is refused, and the recorder exits (its pod restarts, visibly) naming the
    endpoint's 401, with what it had stored kept; it does not go on silently unready."""
    env = _env(oauth, recorder_env, fresh_database, fresh_bucket, topics)
    oauth.endpoint.lifetime_s = SHORT_TOKEN_S
    secret = oauth.endpoint.client_secret
    try:
        rec = RecorderProcess(env, tmp_path / "recorder.log").start()
        try:
            records = as_sent.corpus((topics[0], topics[1]), PARTITIONS, ticks=100, books=10)
            await as_sent.send(oauth.broker.plain, records)
            want = as_sent.wanted(records, topics[0], topics[1])
            await as_sent.wait_stored(env, want, [rec])
            oauth.endpoint.client_secret = "rotated-" + secret
            try:
                code = await asyncio.to_thread(rec.wait, 20 * SHORT_TOKEN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running with a revoked secret: {rec.tail()}")
            assert code != 0
        finally:
            rec.ensure_stopped()
    finally:
        oauth.endpoint.lifetime_s = 3600
        oauth.endpoint.client_secret = secret
    named = f"OAuth token endpoint {oauth.endpoint.token_url} answered HTTP 401 (invalid_client)"
    assert named in rec.log_path.read_text(), rec.tail()
    assert await as_sent.holds_exactly(env, want)
