"""`sasl.jaas.config` from a Secret key: the two readers (the operator's for its lag reads, the
recorder's for its consumer) agree, bad lines name what is missing, and the rendering passes
the Secret key by reference (the operator's read of a real Secret is in
tests/integration/k8s/test_operator_secrets.py)."""

from __future__ import annotations

from typing import Any

import pytest
from datarecorder_operator import environment, jaas
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SpecError

from recorder.kafka.options import client_options, jaas_credentials
from recorder.runtime.settings import Settings

STRIMZI_LINE = (
    "org.apache.kafka.common.security.scram.ScramLoginModule required "
    'username="recorder" password="p4ss;w=rd";'
)
CASES = [
    (STRIMZI_LINE, ("recorder", "p4ss;w=rd")),
    ('PlainLoginModule required username=alice password="a \\"quoted\\" one";', ("alice", 'a "quoted" one')),
    ('x required\n  username = "u"\n  password = "p"\n;', ("u", "p")),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_both_readers_take_the_same_credentials(line: str, expected: tuple[str, str]) -> None:
    assert jaas.credentials(line) == expected
    assert jaas_credentials(line) == expected


@pytest.mark.parametrize("reader", [jaas.credentials, jaas_credentials])
def test_a_line_without_a_password_says_so(reader: Any) -> None:
    with pytest.raises(ValueError, match="no password option"):
        reader('ScramLoginModule required username="u";')
    with pytest.raises(ValueError, match="no username and no password"):
        reader("ScramLoginModule required;")


def test_the_recorder_uses_the_jaas_config_where_username_and_password_are_unset() -> None:
    settings = Settings(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_JAAS_CONFIG=STRIMZI_LINE,
    )
    opts = client_options(settings)
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("recorder", "p4ss;w=rd")
    explicit = Settings(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="other",
        KAFKA_SASL_JAAS_CONFIG=STRIMZI_LINE,
    )
    assert client_options(explicit)["sasl_plain_username"] == "other"


BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}


def _kafka(**sasl: Any) -> dict[str, Any]:
    return {
        "brokers": ["market-kafka-bootstrap.kafka.svc:9092"],
        "securityProtocol": "SASL_PLAINTEXT",
        "sasl": {"mechanism": "SCRAM-SHA-512", "secretName": "recorder", **sasl},
    }


def test_the_jaas_key_reaches_the_pod_by_reference_only() -> None:
    spec = parse_spec("rec", "md", {**BASE, "kafka": _kafka(jaasConfigKey="sasl.jaas.config")})
    env = {e["name"]: e for e in environment.secret_env(spec)}
    assert env["KAFKA_SASL_JAAS_CONFIG"]["valueFrom"]["secretKeyRef"] == {
        "name": "recorder",
        "key": "sasl.jaas.config",
    }
    assert "KAFKA_SASL_USERNAME" not in env and "KAFKA_SASL_PASSWORD" not in env
    assert "KAFKA_SASL_JAAS_CONFIG" not in environment.config_data(spec)


def test_a_literal_username_and_a_jaas_key_exclude_each_other() -> None:
    with pytest.raises(SpecError, match="username and jaasConfigKey exclude each other"):
        parse_spec("rec", "md", {**BASE, "kafka": _kafka(username="u", jaasConfigKey="j")})
