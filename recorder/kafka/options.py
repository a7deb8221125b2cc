"""Keyword arguments for aiokafka clients from settings: brokers, TLS and SASL.

Pure but for the OAUTHBEARER token provider it builds (recorder/kafka/oauth.py), which fetches
nothing until a client connects; every client of the recorder and its tools gets its options
here, so every one of them logs in the same way.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from recorder.kafka.oauth import token_provider
from recorder.runtime.settings import Settings

# How long the group waits for members to rejoin a rebalance (aiokafka's rebalance_timeout_ms).
REBALANCE_TIMEOUT_MS = 60_000
# A revocation (flush, then commit) must end well inside the rebalance timeout, or the group
# moves on without this member and its partitions go to others with the work still in flight:
# half of it, less the time the commit and the rejoin take.
REVOKE_DEADLINE_SEC = REBALANCE_TIMEOUT_MS / 1000 / 2 - 5
# aiokafka's poll interval bound: our loop fetches continuously (paused partitions included),
# so only a wedged event loop reaches it.
MAX_POLL_INTERVAL_MS = 300_000


def client_options(settings: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "bootstrap_servers": ",".join(settings.KAFKA_BROKERS),
        "security_protocol": settings.KAFKA_SECURITY_PROTOCOL,
    }
    if settings.KAFKA_SECURITY_PROTOCOL in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.KAFKA_SSL_CA_FILE) if settings.KAFKA_SSL_CA_FILE else None
        )
        if settings.KAFKA_SSL_CERT_FILE:
            context.load_cert_chain(
                str(settings.KAFKA_SSL_CERT_FILE),
                str(settings.KAFKA_SSL_KEY_FILE) if settings.KAFKA_SSL_KEY_FILE else None,
            )
        opts["ssl_context"] = context
    provider = (
        token_provider(settings) if settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL") else None
    )
    if provider is not None:
        # OAUTHBEARER on the wire for both: MSK's IAM login is an OAUTHBEARER token too.
        opts["sasl_mechanism"] = "OAUTHBEARER"
        opts["sasl_oauth_token_provider"] = provider
    elif settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL"):
        username = settings.KAFKA_SASL_USERNAME
        password = (
            settings.KAFKA_SASL_PASSWORD.get_secret_value()
            if settings.KAFKA_SASL_PASSWORD
            else None
        )
        if settings.KAFKA_SASL_JAAS_CONFIG is not None and (username is None or password is None):
            jaas_user, jaas_password = jaas_credentials(
                settings.KAFKA_SASL_JAAS_CONFIG.get_secret_value()
            )
            username = username if username is not None else jaas_user
            password = password if password is not None else jaas_password
        opts["sasl_mechanism"] = settings.KAFKA_SASL_MECHANISM
        opts["sasl_plain_username"] = username
        opts["sasl_plain_password"] = password
    return opts


def consumer_options(settings: Settings) -> dict[str, Any]:
    """What only the recorder's group consumers take on top of `client_options`: the rack its
    fetches name (KIP-392 fetch-from-follower; none when KAFKA_CLIENT_RACK is empty)."""
    rack = settings.KAFKA_CLIENT_RACK.strip()
    return {"client_rack": rack} if rack else {}


# key="quoted value" (with \" and \\ escapes, as Kafka's JAAS parser takes) or key=bare-word.
_JAAS_OPTION = re.compile(r'([A-Za-z_][\w.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]+))')


def jaas_credentials(config: str) -> tuple[str, str]:
    """(username, password) of a `sasl.jaas.config` line, e.g. `...ScramLoginModule required
    username="u" password="p";`; ValueError naming what is missing (the operator has the same
    reader for its lag reads: operator/datarecorder_operator/jaas.py)."""
    options = {
        m[1]: re.sub(r"\\(.)", r"\1", m[2]) if m[2] is not None else m[3]
        for m in _JAAS_OPTION.finditer(config)
    }
    missing = [key for key in ("username", "password") if not options.get(key)]
    if missing:
        raise ValueError(
            f"KAFKA_SASL_JAAS_CONFIG has no {' and no '.join(missing)} option "
            '(expected e.g. ...LoginModule required username="..." password="...";)'
        )
    return options["username"], options["password"]
