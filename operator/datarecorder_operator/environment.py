"""The recorder's environment contract: a spec in, the recorder pods' environment out; pure.

Owns the variables the operator sets (each a field of `recorder.runtime.settings.Settings`, a
test holds them to it), where the Secrets they name are mounted, and the config hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from datarecorder_operator.spec import IcebergSpec, RecorderSpec, SecretKey

HTTP_PORT = 8080
TLS_MOUNT = "/etc/datarecorder/kafka-tls"
CLIENT_TLS_MOUNT = "/etc/datarecorder/kafka-client-tls"
DB_CA_MOUNT = "/etc/datarecorder/db-ca"


def config_data(spec: RecorderSpec) -> dict[str, str]:
    """Non-secret settings as the recorder's environment (the ConfigMap's data)."""
    data: dict[str, str] = {
        "KAFKA_BROKERS": ",".join(spec.kafka.brokers),
        "KAFKA_GROUP_ID": spec.kafka.group_id,
        "KAFKA_TOPICS": ",".join(spec.kafka.topics),
        "KAFKA_SECURITY_PROTOCOL": spec.kafka.security_protocol,
        "TIMESCALEDB_HOST": spec.timescaledb.host,
        "TIMESCALEDB_PORT": str(spec.timescaledb.port),
        "TIMESCALEDB_USER": spec.timescaledb.user,
        "TIMESCALEDB_DB": spec.timescaledb.database,
        "DB_WRITE_WORKERS": str(spec.timescaledb.write_workers),
        "DB_WRITE_ENABLED": "true" if spec.timescaledb.write_enabled else "false",
        "TIMESCALEDB_SSLMODE": spec.timescaledb.ssl_mode,
        "KAFKA_AUTO_OFFSET_RESET": spec.autoscaling.offset_reset_policy,
        "S3_WRITE_ENABLED": "true" if spec.s3.enabled else "false",
        "BATCH_SIZE": str(spec.batching.batch_size),
        "BATCH_TIMEOUT_MS": str(spec.batching.batch_timeout_ms),
        "MAX_BUFFER_SIZE": str(spec.batching.max_buffer_size),
        "NUM_CONSUMERS": str(spec.batching.num_consumers),
        "HTTP_PORT": str(HTTP_PORT),
        "SHUTDOWN_TIMEOUT_SEC": str(spec.shutdown_timeout_seconds),
        "LOG_LEVEL": spec.log_level,
    }
    if spec.kafka.start_from is not None:
        data["START_FROM"] = spec.kafka.start_from
    if spec.kafka.rack is not None and spec.kafka.rack.id is not None:
        data["KAFKA_CLIENT_RACK"] = spec.kafka.rack.id
    if spec.flow_paused:
        # Only while paused: a running recorder's config (and hash) stays as it always was.
        data["PAUSED"] = "true"
    if spec.s3.enabled and spec.s3.format == "iceberg":
        # Only for Iceberg: a Parquet lake's config (and hash) stays as it always was.
        data["LAKE_FORMAT"] = "iceberg"
        iceberg = spec.s3.iceberg or IcebergSpec()
        values = {
            "ICEBERG_CATALOG_URI": iceberg.catalog_uri,
            "ICEBERG_CATALOG_NAME": iceberg.catalog_name,
            "ICEBERG_WAREHOUSE": iceberg.warehouse,
            "ICEBERG_NAMESPACE": iceberg.namespace,
            "ICEBERG_TICK_TABLE": iceberg.tick_table,
            "ICEBERG_ORDERBOOK_TABLE": iceberg.orderbook_table,
            "ICEBERG_SYMBOL_BUCKETS": (
                None if iceberg.symbol_buckets is None else str(iceberg.symbol_buckets)
            ),
        }
        data.update({name: value for name, value in values.items() if value is not None})
    if spec.kafka.sasl is not None:
        sasl = spec.kafka.sasl
        data["KAFKA_SASL_MECHANISM"] = sasl.mechanism
        if sasl.oauthbearer is not None:  # the client secret is a secretKeyRef (secret_env)
            data["KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"] = sasl.oauthbearer.token_endpoint_url
            data["KAFKA_SASL_OAUTHBEARER_CLIENT_ID"] = sasl.oauthbearer.client_id
            if sasl.oauthbearer.scope:
                data["KAFKA_SASL_OAUTHBEARER_SCOPE"] = sasl.oauthbearer.scope
        if sasl.aws_region is not None:
            data["KAFKA_SASL_AWS_REGION"] = sasl.aws_region
    tls = spec.kafka.tls
    if tls is not None:
        data["KAFKA_SSL_CA_FILE"] = f"{TLS_MOUNT}/{tls.ca.key}"
        if tls.cert is not None and tls.key is not None:
            mount = tls_mounts(spec)[tls.cert.name]
            data["KAFKA_SSL_CERT_FILE"] = f"{mount}/{tls.cert.key}"
            data["KAFKA_SSL_KEY_FILE"] = f"{mount}/{tls.key.key}"
    if spec.timescaledb.ca is not None:
        # asyncpg reads libpq's variable for the CA of verify-ca / verify-full.
        data["PGSSLROOTCERT"] = f"{DB_CA_MOUNT}/{spec.timescaledb.ca.key}"
    if spec.s3.enabled:
        data.update(
            {
                "S3_BUCKET": spec.s3.bucket,
                "S3_REGION": spec.s3.region,
                "S3_PREFIX": spec.s3.prefix,
                "S3_BATCH_SIZE": str(spec.s3.batch_size),
                "S3_BATCH_TIMEOUT_SEC": str(spec.s3.batch_timeout_sec),
                "PARQUET_ORDERBOOK_LEVELS": spec.s3.orderbook_levels,
                "PARQUET_TIMESTAMP_UNIT": spec.s3.timestamp_unit,
            }
        )
        if spec.s3.endpoint_url:
            data["S3_ENDPOINT_URL"] = spec.s3.endpoint_url
    return data


def tls_mounts(spec: RecorderSpec) -> dict[str, str]:
    """Where each Kafka TLS Secret is mounted: the CA's at TLS_MOUNT, a client certificate
    kept in another Secret (Strimzi's KafkaUser) at CLIENT_TLS_MOUNT."""
    tls = spec.kafka.tls
    if tls is None:
        return {}
    mounts = {tls.ca.name: TLS_MOUNT}
    if tls.cert is not None and tls.cert.name not in mounts:
        mounts[tls.cert.name] = CLIENT_TLS_MOUNT
    return mounts


def secret_env(spec: RecorderSpec) -> list[dict[str, Any]]:
    """Environment variables that come from Secrets (never copied into the ConfigMap)."""
    refs: list[tuple[str, str, str]] = [
        ("TIMESCALEDB_PASSWORD", spec.timescaledb.password.name, spec.timescaledb.password.key)
    ]
    if spec.s3.enabled and spec.s3.access_key_id and spec.s3.secret_access_key:
        refs.append(("AWS_ACCESS_KEY_ID", spec.s3.access_key_id.name, spec.s3.access_key_id.key))
        refs.append(
            (
                "AWS_SECRET_ACCESS_KEY",
                spec.s3.secret_access_key.name,
                spec.s3.secret_access_key.key,
            )
        )
    iceberg = spec.s3.iceberg
    if spec.s3.enabled and spec.s3.format == "iceberg" and iceberg:
        if iceberg.catalog_password:
            password = iceberg.catalog_password
            refs.append(("ICEBERG_CATALOG_PASSWORD", password.name, password.key))
        if iceberg.catalog_credential:
            credential = iceberg.catalog_credential
            refs.append(("ICEBERG_CATALOG_CREDENTIAL", credential.name, credential.key))
    literal: list[dict[str, Any]] = []
    if spec.kafka.sasl is not None:
        sasl = spec.kafka.sasl
        if sasl.oauthbearer is not None:
            secret = sasl.oauthbearer.client_secret
            refs.append(("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", secret.name, secret.key))
        if sasl.jaas_config is not None:
            jaas = sasl.jaas_config
            refs.append(("KAFKA_SASL_JAAS_CONFIG", jaas.name, jaas.key))
        elif isinstance(sasl.username, SecretKey):
            refs.append(("KAFKA_SASL_USERNAME", sasl.username.name, sasl.username.key))
        elif sasl.username is not None:  # a user name is no secret (Strimzi's: the KafkaUser's)
            literal.append({"name": "KAFKA_SASL_USERNAME", "value": sasl.username})
        if sasl.jaas_config is None and sasl.password is not None:
            refs.append(("KAFKA_SASL_PASSWORD", sasl.password.name, sasl.password.key))
    return literal + [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for env, secret, key in refs
    ]


def rack_env(spec: RecorderSpec) -> list[dict[str, Any]]:
    """KAFKA_CLIENT_RACK from the pod's own copy of its node's zone label (the downward API
    cannot read node labels; PodTopologyLabelsAdmission copies topology.kubernetes.io/zone and
    /region onto the pod at binding). Without the label the value is empty: no rack."""
    rack = spec.kafka.rack
    if rack is None or rack.topology_key is None:
        return []
    path = f"metadata.labels['{rack.topology_key}']"
    return [{"name": "KAFKA_CLIENT_RACK", "valueFrom": {"fieldRef": {"fieldPath": path}}}]


def config_hash(spec: RecorderSpec) -> str:
    """A digest of everything that reaches the container's environment and mounts.

    It is written on the pod template, so any change of it rolls the pods (a ConfigMap change
    alone would not restart them).
    """
    payload = {
        "config": config_data(spec),
        "secrets": secret_env(spec),
        "tls": sorted(tls_mounts(spec).items()),
        "db_ca": spec.timescaledb.ca.name if spec.timescaledb.ca else None,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
