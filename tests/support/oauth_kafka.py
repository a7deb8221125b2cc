"""An OAuth 2.0 token endpoint and a Kafka broker that validates its tokens, for the tests of
the OAUTHBEARER login.

The endpoint (aiohttp on loopback, in a thread of its own so that a test blocking on a
subprocess never stalls it) grants client credentials with RS256 JWTs (`sub`, `iat`, `exp`,
`scope`) and serves its key as a JWKS. The broker is the dev stack's KRaft node
(recorder/devstack/kafka.py: its config, storage format, command line and readiness probe)
with a second listener, SASL_PLAINTEXT, on which Kafka's own OAuthBearerValidatorCallbackHandler
checks the tokens against that JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from recorder.devstack import kafka, procs

KID = "test-key-1"
# Kafka 4.4's validator refuses to start without an expected audience; the issuer is checked too.
AUDIENCE = "datarecorder-test-kafka"
# The broker is a throwaway: a small heap, the dev stack's start-up limit.
HEAP = "384m"
READY_TIMEOUT_S = 120.0
# Positive turns on session lifetimes (KIP-368): a connection lives no longer than its token
# (nor than this), then the broker closes it unless it re-authenticated.
MAX_REAUTH_MS = 600_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _uint(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass
class TokenEndpoint:
    """Client credentials → RS256 JWTs. `lifetime_s` is the tokens' `exp - iat` (changeable
    while it runs); `issued` counts the tokens granted, `refused` the refusals."""

    client_id: str = "recorder"
    client_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    lifetime_s: int = 3600
    issued: int = 0
    refused: int = 0
    port: int = field(default_factory=procs.free_port)
    _key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    def jwt(self, subject: str, scope: str) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        claims = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + self.lifetime_s,
            "scope": scope,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def _client(self, request: web.Request, form: Any) -> tuple[str, str]:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return unquote_plus(user), unquote_plus(password)
        return str(form.get("client_id", "")), str(form.get("client_secret", ""))

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, secret = self._client(request, form)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (client_id, secret) != (self.client_id, self.client_secret):
            self.refused += 1
            return web.json_response(
                {"error": "invalid_client", "error_description": "bad client credentials"},
                status=401,
            )
        self.issued += 1
        scope = str(form.get("scope", ""))
        return web.json_response(
            {
                "access_token": self.jwt(client_id, scope),
                "token_type": "Bearer",
                "expires_in": self.lifetime_s,
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        public = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256"}
        return web.json_response({"keys": [{**key, "n": _uint(public.n), "e": _uint(public.e)}]})

    def start(self) -> TokenEndpoint:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/token", self._token)
            app.router.add_get("/jwks", self._jwks)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=serve, name="token-endpoint", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the token endpoint did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)


@dataclass
class OAuthBroker:
    """A single-node KRaft broker: PLAINTEXT on `port` (the tests' producers and admin),
    SASL_PLAINTEXT with OAUTHBEARER on `sasl_port` (the recorder)."""

    dir: Path
    port: int
    sasl_port: int
    pid: int

    @property
    def plain(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def log(self, lines: int = 40) -> str:
        return procs.tail(self.dir / "server.log", lines)


def oauth_properties(
    data: Path, port: int, sasl_port: int, controller_port: int, jwks_url: str, issuer: str
) -> dict[str, str]:
    """The dev stack's broker properties with the OAUTHBEARER listener added."""
    validator = "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
    login = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"
    sasl = "listener.name.sasl_plaintext.oauthbearer"
    props = kafka.broker_properties(data, port, controller_port, num_partitions="3")
    props.update(
        {
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port},"
                f"CONTROLLER://127.0.0.1:{controller_port}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl_port}"
            ),
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "OAUTHBEARER",
            f"{sasl}.sasl.jaas.config": f"{login} required ;",
            f"{sasl}.sasl.server.callback.handler.class": validator,
            "sasl.oauthbearer.jwks.endpoint.url": jwks_url,
            "sasl.oauthbearer.expected.audience": AUDIENCE,
            "sasl.oauthbearer.expected.issuer": issuer,
            "connections.max.reauth.ms": str(MAX_REAUTH_MS),
        }
    )
    return props


def start_broker(d: Path, endpoint: TokenEndpoint) -> OAuthBroker:
    """Configure, format and start the broker; return once it answers metadata (probed on its
    PLAINTEXT listener, as the dev stack probes its own)."""
    port, sasl_port, controller_port = procs.free_ports(3)
    props = oauth_properties(
        d / "data", port, sasl_port, controller_port, endpoint.jwks_url, endpoint.url
    )
    kafka.write_config(d, props)
    java, libs = kafka.java_binary(), kafka.jars(procs.log)
    kafka.format_storage(java, libs, d)
    argv = kafka.broker_argv(java, libs, d, HEAP)
    # Kafka 4 fetches no JWKS or token URL it was not told to allow (a JVM system property).
    allowed = f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={endpoint.jwks_url}"
    argv.insert(1, allowed)
    proc = procs.spawn(argv, d / "stdout.log", cwd=d)
    broker = OAuthBroker(d, port, sasl_port, proc.pid)
    try:
        asyncio.run(
            procs.wait_ready(
                f"the OAuth test broker at {broker.plain}",
                lambda: kafka.probe(broker.plain),
                READY_TIMEOUT_S,
                lambda: proc.poll() is None,
                [d / "stdout.log", d / "server.log"],
                pid=proc.pid,
            )
        )
    except BaseException:
        stop_broker(broker)
        raise
    return broker


def stop_broker(broker: OAuthBroker) -> None:
    procs.terminate(broker.pid, timeout=30, kill=True)


@dataclass
class OAuthKafka:
    endpoint: TokenEndpoint
    broker: OAuthBroker

    def recorder_env(self, *, secret: str | None = None) -> dict[str, str]:
        """The recorder's Kafka login variables for this broker and endpoint."""
        return {
            "KAFKA_BROKERS": self.broker.sasl,
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": self.endpoint.token_url,
            "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": self.endpoint.client_id,
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": secret or self.endpoint.client_secret,
            "KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka",
        }


def oauth_kafka(d: Path) -> Iterator[OAuthKafka]:
    """The endpoint and its broker, for a fixture: stopped (broker first) afterwards."""
    endpoint = TokenEndpoint().start()
    try:
        broker = start_broker(d, endpoint)
        try:
            yield OAuthKafka(endpoint, broker)
        finally:
            stop_broker(broker)
    finally:
        endpoint.stop()
