"""SASL OAUTHBEARER token providers for aiokafka: an OAuth 2.0 token endpoint, and AWS MSK IAM.

Owns the client-credentials grant (the request Kafka's own `sasl.oauthbearer` client sends,
its answers read into a token or an error naming the endpoint and the HTTP status, never the
secret), the cache that keeps a token until most of its lifetime is spent, and the MSK IAM
token (AWS's signer, run in a thread).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from aiokafka.abc import AbstractTokenProvider

from recorder.runtime.retry import Transient, retry_forever
from recorder.runtime.settings import Settings

# A token is renewed once this share of its lifetime has passed (Kafka's own client renews at
# sasl.login.refresh.window.factor, 0.8 by default): new connections never present a token
# about to expire, and the broker's re-authentication window stays ahead of the expiry.
REFRESH_FACTOR = 0.8
# A token whose answer gives no lifetime (no expires_in, no JWT exp) is renewed after this.
DEFAULT_LIFETIME_SEC = 300.0
# One request to the token endpoint: connect, send, read the answer.
REQUEST_TIMEOUT_SEC = 30.0
# Statuses a retry fixes: the endpoint's own trouble, throttling, a request timeout.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
# RFC 6749 5.2's error codes are of this form: safe to repeat in an error message.
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}")
# How the retries of a token request show up in the retry telemetry (recorder.runtime.retry).
RETRY_WHAT = "kafka_oauth_token"


class TokenError(Exception):
    """The token endpoint refused the grant (a 4xx: wrong client id or secret, unknown scope)
    or answered something that is no token: a configuration mistake, never retried."""


class TokenEndpointUnavailable(Transient):
    """The token endpoint could not be reached or answered 5xx/429: waited for."""


@dataclass(frozen=True)
class Token:
    value: str
    lifetime_sec: float


def refresh_due(fetched_at: float, lifetime_sec: float) -> float:
    """Pure: the clock time from which a token fetched at `fetched_at` is renewed."""
    return fetched_at + max(0.0, lifetime_sec) * REFRESH_FACTOR


def jwt_lifetime(token: str, now_epoch: float) -> float | None:
    """Seconds until a JWT's `exp` (read, not verified: the broker verifies), None when the
    token is not a JWT or has no `exp`."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp) - now_epoch
    return None


def read_token_response(url: str, status: int, body: bytes, now_epoch: float) -> Token:
    """Pure: the token of a token endpoint's answer, or the error that names `url` and the
    status (and the RFC 6749 error code, when the answer has one; never the request)."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if status != 200:
        code = doc.get("error") if isinstance(doc, dict) else None
        detail = f" ({code})" if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
        message = f"OAuth token endpoint {url} answered HTTP {status}{detail}"
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TokenEndpointUnavailable(message)
        hint = (
            ": check KAFKA_SASL_OAUTHBEARER_CLIENT_ID and KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"
            if status in (400, 401, 403)
            else ""
        )
        raise TokenError(message + hint)
    if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
        raise TokenError(f"OAuth token endpoint {url} answered HTTP 200 without an access_token")
    value: str = doc["access_token"]
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():  # some endpoints send a string
        expires_in = int(expires_in)
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        lifetime = float(expires_in)
    else:
        lifetime = jwt_lifetime(value, now_epoch) or DEFAULT_LIFETIME_SEC
    return Token(value, lifetime)


def grant_request(
    client_id: str, client_secret: str, scope: str, client_auth: str
) -> tuple[dict[str, str], str]:
    """Pure: the headers and form body of a client-credentials grant. `basic` authenticates as
    Kafka's client does (RFC 6749 2.3.1: both parts form-encoded, then an HTTP Basic header);
    `form` puts client_id and client_secret in the body."""
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    if client_auth == "basic":
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form.update(client_id=client_id, client_secret=client_secret)
    return headers, urlencode(form)


class CachedTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no types
    """A token shared by every connection of a client, fetched again once REFRESH_FACTOR of
    its lifetime has passed; one fetch at a time (aiokafka connects to brokers at once)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Token]],
        extensions: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._extensions = dict(extensions or {})
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        # The last fetch's refusal, until a fetch succeeds (see `login_refused`).
        self.refused: TokenError | MskIamTokenError | None = None

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                fetched_at = self._clock()
                try:
                    token = await self._fetch()
                except (TokenError, MskIamTokenError) as exc:
                    self.refused = exc
                    raise
                self._token, self.refused = token.value, None
                self._refresh_at = refresh_due(fetched_at, token.lifetime_sec)
            return self._token

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)


class ClientCredentials:
    """The client-credentials grant against one token endpoint (aiohttp, one session per
    request: a grant every few minutes needs no pool)."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        scope: str = "",
        client_auth: str = "basic",
        max_backoff: float = 10.0,
    ) -> None:
        self.url = url
        self._headers, self._body = grant_request(client_id, client_secret, scope, client_auth)
        self._max_backoff = max_backoff

    async def fetch(self) -> Token:
        """A fresh token; waits out an endpoint that is down or busy (the one retry rule),
        raises TokenError on a refusal."""
        return await retry_forever(RETRY_WHAT, self._attempt, self._max_backoff)

    async def _attempt(self) -> Token:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SEC)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self.url, data=self._body, headers=self._headers) as resp,
            ):
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # aiohttp's messages name the host, never the request's headers or body.
            raise TokenEndpointUnavailable(
                f"OAuth token endpoint {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        return read_token_response(self.url, status, body, time.time())


class MskIamTokenError(Exception):
    """No AWS credentials to sign an MSK IAM token with: a configuration mistake."""


def msk_iam_token(region: str) -> Token:
    """An MSK IAM token (AWS's signer: a presigned `kafka-cluster:Connect` URL, base64url)
    from the default AWS credentials chain; blocking (it may call STS or the instance
    metadata service)."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    try:
        value, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    except (AttributeError, ValueError) as exc:  # the signer's "no credentials" forms
        raise MskIamTokenError(
            f"AWS_MSK_IAM: no AWS credentials to sign the MSK token for {region} with "
            "(the pod's IAM role, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a profile): "
            f"{type(exc).__name__}"
        ) from None
    return Token(value, expiry_ms / 1000 - time.time())


def login_refused(options: Mapping[str, object]) -> Exception | None:
    """The refusal of the token behind a client's options, if its last fetch was refused.

    At start-up a refusal stops the client's start (aiokafka lets the provider's error through).
    Later it ends in one of aiokafka's background tasks instead: the coordinator's surfaces at
    the next fetch, but a fetcher task that died leaves `getmany` answering nothing forever.
    The source asks this at each fetch, so a revoked secret stops the recorder, named."""
    provider = options.get("sasl_oauth_token_provider")
    return provider.refused if isinstance(provider, CachedTokenProvider) else None


def token_provider(settings: Settings) -> AbstractTokenProvider | None:
    """The OAUTHBEARER token provider the settings ask for; None for the other mechanisms."""
    if settings.KAFKA_SASL_MECHANISM == "OAUTHBEARER":
        secret = settings.KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET
        grant = ClientCredentials(
            settings.KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL,
            settings.KAFKA_SASL_OAUTHBEARER_CLIENT_ID,
            secret.get_secret_value() if secret is not None else "",
            settings.KAFKA_SASL_OAUTHBEARER_SCOPE,
            settings.KAFKA_SASL_OAUTHBEARER_CLIENT_AUTH,
            settings.RETRY_MAX_BACKOFF_SEC,
        )
        return CachedTokenProvider(grant.fetch, settings.sasl_extensions())
    if settings.KAFKA_SASL_MECHANISM == "AWS_MSK_IAM":
        region = settings.KAFKA_SASL_AWS_REGION

        async def signed() -> Token:
            return await asyncio.to_thread(msk_iam_token, region)

        return CachedTokenProvider(signed)
    return None
