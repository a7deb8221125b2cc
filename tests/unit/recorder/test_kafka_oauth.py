"""Kafka logins of managed services: OAUTHBEARER (client credentials) and AWS MSK IAM.

The settings' checks, the grant request, the token endpoint's answers, the token cache on a
fake clock, the MSK IAM token's content with static credentials, and the options every client
gets. The real broker and token endpoint: tests/integration/recorder/test_kafka_oauth.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from recorder.kafka.oauth import (
    REFRESH_FACTOR,
    CachedTokenProvider,
    Token,
    TokenEndpointUnavailable,
    TokenError,
    grant_request,
    login_refused,
    msk_iam_token,
    read_token_response,
)
from recorder.kafka.options import client_options
from recorder.runtime.settings import ConfigError, Settings, load_settings

URL = "https://login.example.com/oauth2/token"
SECRET = "s3cr3t+/=&value"
OAUTH = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
    "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": URL,
    "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "recorder",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": SECRET,
}
MSK = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM"}


def _settings(**env: str) -> Settings:
    return load_settings(_env_file=None, KAFKA_TOPICS="market.tick", **env)


def _refused(**env: str) -> str:
    with pytest.raises(ConfigError) as err:
        _settings(**env)
    return str(err.value)


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    [
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_ID",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    ],
)
def test_oauthbearer_needs_the_endpoint_the_client_id_and_the_secret(missing: str) -> None:
    env = {k: v for k, v in OAUTH.items() if k != missing}
    message = _refused(**env)
    assert "KAFKA_SASL_MECHANISM=OAUTHBEARER needs" in message and missing in message
    assert SECRET not in message


@pytest.mark.parametrize("url", ["ftp://login.example.com/token", "login.example.com", "https://"])
def test_the_token_endpoint_must_be_an_http_url(url: str) -> None:
    message = _refused(**{**OAUTH, "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": url})
    assert "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL" in message and "http(s) URL" in message


def test_oauthbearer_settings_are_not_checked_without_sasl() -> None:
    _settings(KAFKA_SASL_MECHANISM="OAUTHBEARER")  # PLAINTEXT: no SASL, nothing needed


def test_the_client_secret_is_masked() -> None:
    assert _settings(**OAUTH).safe_dump()["KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"] == "***"


def test_extensions() -> None:
    settings = _settings(**OAUTH, KAFKA_SASL_OAUTHBEARER_EXTENSIONS="logicalCluster=lkc-1, a=b")
    assert settings.sasl_extensions() == {"logicalCluster": "lkc-1", "a": "b"}
    for bad in ("novalue", "bad-key=x", "auth=x"):
        message = _refused(**OAUTH, KAFKA_SASL_OAUTHBEARER_EXTENSIONS=bad)
        assert "KAFKA_SASL_OAUTHBEARER_EXTENSIONS" in message, message


def test_msk_iam_needs_sasl_ssl() -> None:
    message = _refused(**{**MSK, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert "AWS_MSK_IAM needs KAFKA_SECURITY_PROTOCOL=SASL_SSL" in message


def test_msk_iam_region_from_its_variable_or_aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert "KAFKA_SASL_AWS_REGION or AWS_REGION (neither is set" in _refused(**MSK)
    assert "'moon' is not a region" in _refused(**MSK, KAFKA_SASL_AWS_REGION="moon")
    assert _settings(**MSK, KAFKA_SASL_AWS_REGION="eu-west-1").KAFKA_SASL_AWS_REGION == (
        "eu-west-1"
    )
    monkeypatch.setenv("AWS_REGION", "ap-northeast-2")
    assert _settings(**MSK).KAFKA_SASL_AWS_REGION == "ap-northeast-2"
    assert _settings(**MSK, KAFKA_SASL_AWS_REGION="us-east-1").KAFKA_SASL_AWS_REGION == (
        "us-east-1"
    )


# --- the grant ----------------------------------------------------------------------------


def test_basic_client_auth_is_kafkas() -> None:
    headers, body = grant_request("my client", SECRET, "kafka read", "basic")
    assert parse_qs(body) == {"grant_type": ["client_credentials"], "scope": ["kafka read"]}
    scheme, _, encoded = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    # RFC 6749 2.3.1: each part form-encoded before the Basic header.
    assert base64.b64decode(encoded).decode() == "my+client:s3cr3t%2B%2F%3D%26value"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_form_client_auth() -> None:
    headers, body = grant_request("recorder", SECRET, "", "form")
    assert "Authorization" not in headers
    assert parse_qs(body) == {
        "grant_type": ["client_credentials"],
        "client_id": ["recorder"],
        "client_secret": [SECRET],
    }


def _jwt(claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_the_lifetime_is_expires_in_else_the_jwts_exp() -> None:
    body = json.dumps({"access_token": "abc", "expires_in": 3600, "token_type": "Bearer"})
    assert read_token_response(URL, 200, body.encode(), 0) == Token("abc", 3600.0)
    jwt = _jwt({"sub": "recorder", "exp": 1_000_120})
    token = read_token_response(URL, 200, json.dumps({"access_token": jwt}).encode(), 1_000_000)
    assert token == Token(jwt, 120.0)
    assert read_token_response(URL, 200, b'{"access_token": "opaque"}', 0).lifetime_sec > 0


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_refusal_names_the_endpoint_and_the_status(status: int) -> None:
    body = json.dumps({"error": "invalid_client", "error_description": SECRET}).encode()
    with pytest.raises(TokenError) as err:
        read_token_response(URL, status, body, 0)
    message = str(err.value)
    assert f"OAuth token endpoint {URL} answered HTTP {status} (invalid_client)" in message
    assert SECRET not in message


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_the_endpoints_own_trouble_is_waited_for(status: int) -> None:
    from recorder.runtime.retry import is_transient

    with pytest.raises(TokenEndpointUnavailable) as err:
        read_token_response(URL, status, b"<html>busy</html>", 0)
    assert is_transient(err.value) and f"HTTP {status}" in str(err.value)
    assert not is_transient(TokenError("x"))


def test_an_answer_without_a_token_is_refused() -> None:
    for body in (b"not json", b"{}", b'{"access_token": 5}'):
        with pytest.raises(TokenError, match="HTTP 200 without an access_token"):
            read_token_response(URL, 200, body, 0)


# --- the cache ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_token_is_kept_until_most_of_its_lifetime_has_passed() -> None:
    clock = FakeClock()
    fetched: list[float] = []

    async def fetch() -> Token:
        fetched.append(clock.now)
        return Token(f"t{len(fetched)}", 100.0)

    provider = CachedTokenProvider(fetch, {"k": "v"}, clock=clock)
    assert await provider.token() == "t1"
    clock.now += 100 * REFRESH_FACTOR - 0.001
    assert await provider.token() == "t1"  # still inside its window
    clock.now += 0.001
    assert await provider.token() == "t2"  # renewed before it expires
    assert await provider.token() == "t2"
    assert fetched == [1000.0, 1000.0 + 100 * REFRESH_FACTOR]
    assert provider.extensions() == {"k": "v"}


async def test_connections_at_once_share_one_fetch() -> None:
    import asyncio

    calls = 0
    gate = asyncio.Event()

    async def fetch() -> Token:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Token("shared", 60.0)

    provider = CachedTokenProvider(fetch, clock=FakeClock())
    waiting = [asyncio.create_task(provider.token()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == ["shared"] * 5
    assert calls == 1


async def test_a_failed_fetch_is_not_cached() -> None:
    answers: list[Token | Exception] = [TokenError("refused"), Token("ok", 60.0)]

    async def fetch() -> Token:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    provider = CachedTokenProvider(fetch, clock=FakeClock())
    options = {"sasl_oauth_token_provider": provider}
    with pytest.raises(TokenError):
        await provider.token()
    # The refusal is kept for the source to raise (aiokafka may swallow it in a background task).
    assert isinstance(login_refused(options), TokenError)
    assert await provider.token() == "ok"
    assert login_refused(options) is None
    assert login_refused({"sasl_plain_password": "p"}) is None


# --- AWS MSK IAM ----------------------------------------------------------------------------


def test_msk_iam_token_is_a_presigned_connect_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """With static credentials in the environment: the token is the base64url of a SigV4
    presigned URL for kafka-cluster:Connect on kafka.<region>.amazonaws.com."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example/secret/key")
    token = msk_iam_token("eu-west-1")
    url = base64.urlsafe_b64decode(token.value + "=" * (-len(token.value) % 4)).decode()
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert (parts.scheme, parts.hostname, parts.path) == (
        "https",
        "kafka.eu-west-1.amazonaws.com",
        "/",
    )
    assert query["Action"] == "kafka-cluster:Connect"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Credential"].startswith("AKIAEXAMPLEKEY000001/")
    assert query["X-Amz-Credential"].endswith("/eu-west-1/kafka-cluster/aws4_request")
    assert query["X-Amz-Expires"] == "900"
    assert len(query["X-Amz-Signature"]) == 64 and query["X-Amz-SignedHeaders"] == "host"
    assert "example/secret/key" not in url
    assert 800 < token.lifetime_sec <= 900


def test_msk_iam_without_credentials_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from recorder.kafka.oauth import MskIamTokenError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    with pytest.raises(MskIamTokenError, match="no AWS credentials to sign the MSK token"):
        msk_iam_token("eu-west-1")


# --- every client ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", [OAUTH, {**MSK, "KAFKA_SASL_AWS_REGION": "eu-west-1"}])
async def test_every_client_logs_in_with_oauthbearer(env: dict[str, str]) -> None:
    opts = client_options(_settings(**env))
    assert opts["sasl_mechanism"] == "OAUTHBEARER"
    provider = opts["sasl_oauth_token_provider"]
    assert isinstance(provider, CachedTokenProvider)
    assert "sasl_plain_password" not in opts
    # aiokafka checks the provider when a client is built; built without connecting.
    consumer = AIOKafkaConsumer(**opts)
    producer = AIOKafkaProducer(**opts)
    admin = AIOKafkaAdminClient(**opts)
    try:
        for client in (consumer._client, producer.client, admin._client):
            assert client._sasl_oauth_token_provider is provider
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


def test_the_secret_is_in_no_option_but_the_provider() -> None:
    opts = client_options(_settings(**OAUTH))
    assert SECRET not in repr({k: v for k, v in opts.items() if k != "ssl_context"})


def test_scram_is_unchanged() -> None:
    opts = client_options(
        Settings(
            _env_file=None,
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            KAFKA_SASL_USERNAME="u",
            KAFKA_SASL_PASSWORD="p",
        )
    )
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512" and "sasl_oauth_token_provider" not in opts


async def test_the_source_raises_a_refused_login_instead_of_fetching() -> None:
    """aiokafka's fetcher task dies on a refused token in a background reconnect (its getmany
    then answers nothing, for good): the source raises the refusal at its next fetch, so the
    recorder stops naming it instead of idling with a revoked secret."""
    from recorder.kafka.source import KafkaSource

    settings = _settings(**OAUTH)
    opts = client_options(settings)
    provider = opts["sasl_oauth_token_provider"]
    provider.refused = TokenError(f"OAuth token endpoint {URL} answered HTTP 401")
    source = KafkaSource(settings, opts, 0)
    try:
        with pytest.raises(TokenError, match="HTTP 401"):
            await source.fetch(10, 10)
    finally:
        await source.consumer.stop()
