"""Kafka auth in Strimzi's shape: a KafkaUser's Secret, the cluster CA's Secret apart from it.

Strimzi's `KafkaUser` Secret holds `password` and `sasl.jaas.config` (SCRAM) or `user.crt`,
`user.key`, `ca.crt` (TLS); the cluster CA lives in `<cluster>-cluster-ca-cert`. The recorder
pods and the operator's own lag reads must both use them as they are.
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from datarecorder_operator import environment, kafkalag, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SecretKey, SpecError

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
# A DataRecorder next to a Strimzi `Kafka` named `market` and a `KafkaUser` named `recorder`.
STRIMZI_SCRAM = {
    "brokers": ["market-kafka-bootstrap.kafka.svc:9093"],
    "securityProtocol": "SASL_SSL",
    "sasl": {"mechanism": "SCRAM-SHA-512", "username": "recorder", "secretName": "recorder"},
    "tls": {"trustedCertificates": [{"secretName": "market-cluster-ca-cert"}]},
}
STRIMZI_MTLS: dict[str, Any] = {
    "brokers": ["market-kafka-bootstrap.kafka.svc:9093"],
    "securityProtocol": "SSL",
    "tls": {
        "trustedCertificates": [{"secretName": "market-cluster-ca-cert", "certificate": "ca.crt"}],
        "certificateAndKey": {"secretName": "recorder"},
    },
}


def spec_with(kafka: dict[str, Any]) -> Any:
    return parse_spec("rec", "md", {**BASE, "kafka": kafka})


def test_scram_user_with_a_literal_name_and_the_cluster_ca_apart() -> None:
    spec = spec_with(STRIMZI_SCRAM)
    env = {e["name"]: e for e in environment.secret_env(spec)}
    assert env["KAFKA_SASL_USERNAME"] == {"name": "KAFKA_SASL_USERNAME", "value": "recorder"}
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "recorder",
        "key": "password",
    }
    data = environment.config_data(spec)
    assert data["KAFKA_SSL_CA_FILE"] == "/etc/datarecorder/kafka-tls/ca.crt"
    assert "KAFKA_SASL_USERNAME" not in data and "KAFKA_SSL_CERT_FILE" not in data


def test_mtls_mounts_the_ca_and_the_user_secret_separately() -> None:
    spec = spec_with(STRIMZI_MTLS)
    pod = workload.render_deployment(spec, 1)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"kafka-tls": "market-cluster-ca-cert", "kafka-client-tls": "recorder"}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["kafka-client-tls"]["readOnly"] is True
    data = environment.config_data(spec)
    assert data["KAFKA_SSL_CA_FILE"] == "/etc/datarecorder/kafka-tls/ca.crt"
    assert data["KAFKA_SSL_CERT_FILE"] == "/etc/datarecorder/kafka-client-tls/user.crt"
    assert data["KAFKA_SSL_KEY_FILE"] == "/etc/datarecorder/kafka-client-tls/user.key"
    assert spec.kafka.tls is not None
    assert spec.kafka.tls.cert == SecretKey("recorder", "user.crt")


def test_one_secret_for_everything_still_works() -> None:
    kafka = {
        "brokers": ["k:9093"],
        "securityProtocol": "SSL",
        "tls": {"secretName": "kafka-tls", "caKey": "ca.pem", "certKey": "c", "keyKey": "k"},
    }
    spec = spec_with(kafka)
    assert environment.tls_mounts(spec) == {"kafka-tls": "/etc/datarecorder/kafka-tls"}
    assert environment.config_data(spec)["KAFKA_SSL_CERT_FILE"] == "/etc/datarecorder/kafka-tls/c"


def test_a_changed_ca_secret_rolls_the_pods() -> None:
    other = {
        **STRIMZI_MTLS,
        "tls": {**STRIMZI_MTLS["tls"], "certificateAndKey": {"secretName": "u2"}},
    }
    assert environment.config_hash(spec_with(STRIMZI_MTLS)) != environment.config_hash(
        spec_with(other)
    )


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"trustedCertificates": [{"secretName": "a"}, {"secretName": "b"}]}, "exactly one"),
        ({"certificateAndKey": {"secretName": "u"}}, "exactly one"),
        ({"secretName": "a", "trustedCertificates": [{"secretName": "b"}]}, "not both"),
    ],
)
def test_bad_tls_shapes_name_the_field(tls: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.kafka\.tls") as err:
        spec_with({"brokers": ["k:9093"], "securityProtocol": "SSL", "tls": tls})
    assert message in str(err.value)


def _self_signed() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recorder")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_cert = cert.public_bytes(serialization.Encoding.PEM).decode()
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem_cert, pem_key


def test_the_operators_lag_reads_present_the_client_certificate() -> None:
    cert, key = _self_signed()
    access = kafkalag.KafkaAccess(
        brokers=["k:9093"], security_protocol="SSL", ca_pem=cert, cert_pem=cert, key_pem=key
    )
    context = access.ssl_context()
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "recorder"),),)]
    _, other_key = _self_signed()
    mismatched = kafkalag.KafkaAccess(
        brokers=["k:9093"], security_protocol="SSL", ca_pem=cert, cert_pem=cert, key_pem=other_key
    )
    with pytest.raises(ssl.SSLError):  # proof that the pair is really loaded, not ignored
        mismatched.ssl_context()
