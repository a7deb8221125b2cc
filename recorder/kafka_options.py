"""Keyword arguments for aiokafka clients from settings (pure): brokers, TLS and SASL."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError

from recorder.settings import Settings


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
    if settings.KAFKA_SECURITY_PROTOCOL.startswith("SASL"):
        opts["sasl_mechanism"] = settings.KAFKA_SASL_MECHANISM
        opts["sasl_plain_username"] = settings.KAFKA_SASL_USERNAME
        opts["sasl_plain_password"] = (
            settings.KAFKA_SASL_PASSWORD.get_secret_value()
            if settings.KAFKA_SASL_PASSWORD
            else None
        )
    return opts


def is_kafka_retriable(exc: BaseException) -> bool:
    """The cluster is unreachable or busy (worth waiting for), not misconfigured or refusing."""
    if isinstance(exc, (KafkaConnectionError, OSError, TimeoutError)):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
