"""Parsing a DataRecorder spec: defaults applied, the checks the CRD schema cannot do, policy.

Owns `parse_spec` (a mapping in, a frozen `RecorderSpec` out, or a `SpecError` naming the field)
and every section but Kafka's (`parsing_kafka`); pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from datarecorder_operator.parsing_kafka import parse_kafka
from datarecorder_operator.policy import RESTRICTED, Policy, policy_violations
from datarecorder_operator.spec import (
    STATES,
    TOKEN_MECHANISMS,
    AutoscalingSpec,
    BatchingSpec,
    Fallback,
    IcebergSpec,
    MonitoringSpec,
    NetworkPolicySpec,
    PDBSpec,
    PodTemplate,
    RecorderSpec,
    S3Spec,
    SpecError,
    TimescaleSpec,
)
from datarecorder_operator.spec_reader import (
    Reader,
    check_key_name,
    mapping_or_none,
    objects,
    parse_quantity,
    secret_key,
)

# The children's Service is `<name>-recorder` (9 characters more), and a Service name must be
# a DNS-1035 label (at most 63), hence 54; the CRD enforces the same with a CEL rule.
MAX_NAME_LENGTH = 54
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}


def _parse_resources(raw: Reader) -> dict[str, dict[str, str]]:
    if not raw.data:
        return {kind: dict(values) for kind, values in DEFAULT_RESOURCES.items()}
    result: dict[str, dict[str, str]] = {}
    for kind in ("requests", "limits"):
        section = raw.sub(kind)
        values: dict[str, str] = {}
        for resource in ("cpu", "memory"):
            if section.has(resource):
                value = section.data[resource]
                parse_quantity(value, f"{section.path}.{resource}")
                values[resource] = str(value)
        if values:
            result[kind] = values
    # The schema cannot compare two quantities; a request above its limit is rejected by the
    # API server only when the Deployment is created, far from the user's resource.
    for resource in ("cpu", "memory"):
        request = result.get("requests", {}).get(resource)
        limit = result.get("limits", {}).get(resource)
        if request is not None and limit is not None:
            req_path, lim_path = f"{raw.path}.requests.{resource}", f"{raw.path}.limits.{resource}"
            if parse_quantity(request, req_path) > parse_quantity(limit, lim_path):
                raise SpecError(f"{req_path} ({request}) must not exceed {lim_path} ({limit})")
    return result


def _parse_fallback(auto_raw: Reader) -> Fallback | None:
    if not auto_raw.has("fallback"):
        return None
    raw = auto_raw.sub("fallback")
    if not raw.has("replicas"):
        raise SpecError("spec.autoscaling.fallback.replicas is required")
    return Fallback(
        failure_threshold=raw.integer("failureThreshold", 3, 1, 100),
        replicas=raw.integer("replicas", 1, 0, 1000),
    )


# Names the operator gives its own env entries and volumes: an extra one of the same name would
# silently shadow (or be shadowed by) the operator's.
RESERVED_ENV = frozenset(
    {"TIMESCALEDB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAFKA_SASL_USERNAME",
     "KAFKA_SASL_PASSWORD", "PGSSLROOTCERT"}
)  # fmt: skip
RESERVED_VOLUMES = frozenset({"tmp", "kafka-tls", "kafka-client-tls", "db-ca"})


def _parse_pod_template(root: Reader) -> PodTemplate:
    template = PodTemplate(
        affinity=mapping_or_none(root, "affinity"),
        topology_spread_constraints=objects(root, "topologySpreadConstraints"),
        env=objects(root, "env"),
        env_from=objects(root, "envFrom"),
        volumes=objects(root, "volumes"),
        volume_mounts=objects(root, "volumeMounts"),
        automount_service_account_token=root.flag("automountServiceAccountToken", False),
        pod_security_context=mapping_or_none(root, "podSecurityContext"),
        container_security_context=mapping_or_none(root, "containerSecurityContext"),
    )
    for i, entry in enumerate(template.env):
        if entry.get("name") in RESERVED_ENV:
            raise SpecError(f"spec.env[{i}].name {entry.get('name')!r} is set by the operator")
    for i, volume in enumerate(template.volumes):
        if volume.get("name") in RESERVED_VOLUMES:
            raise SpecError(f"spec.volumes[{i}].name {volume.get('name')!r} is the operator's")
    return template


def _parse_timescaledb(root: Reader) -> TimescaleSpec:
    """spec.timescaledb: where the hot path writes, and how securely."""
    db_raw = root.sub("timescaledb")
    timescaledb = TimescaleSpec(
        host=db_raw.text("host"),
        port=db_raw.integer("port", 5432, 1, 65535),
        database=db_raw.text("database", "marketdata"),  # the recorder's TIMESCALEDB_DB default
        user=db_raw.text("user", "recorder"),
        password=secret_key(db_raw.sub("passwordSecret"), "name", "key", "password"),
        write_workers=db_raw.integer("writeWorkers", 4, 1, 64),
        write_enabled=db_raw.flag("writeEnabled", True),
        ssl_mode=db_raw.text(
            "sslMode",
            "prefer",
            choices=("disable", "prefer", "require", "verify-ca", "verify-full"),
        ),
        ca=secret_key(db_raw.sub("caSecret"), "name", "key", "ca.crt")
        if db_raw.has("caSecret")
        else None,
    )
    return timescaledb


# The CRD's pattern: a URL with no whitespace or control characters (they cannot reach an
# environment variable).
ENDPOINT_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+")


# spec.s3.iceberg's text fields and the recorder's variables they become.
ICEBERG_FIELDS = {
    "catalogURI": "ICEBERG_CATALOG_URI",
    "catalogName": "ICEBERG_CATALOG_NAME",
    "warehouse": "ICEBERG_WAREHOUSE",
    "namespace": "ICEBERG_NAMESPACE",
    "tickTable": "ICEBERG_TICK_TABLE",
    "orderbookTable": "ICEBERG_ORDERBOOK_TABLE",
}


def _is_rest(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _parse_iceberg(raw: Reader) -> IcebergSpec | None:
    """spec.s3.iceberg: the catalog (an SQL catalog's password or a REST catalog's client
    credentials from a Secret) and the table names; None when it sets nothing (the recorder's
    defaults)."""
    if not raw.data:
        return None
    texts = {f: raw.text(f) if raw.has(f) else None for f in ICEBERG_FIELDS}
    uri = texts["catalogURI"] or ""
    authority = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""
    if _is_rest(uri) and "@" in authority:
        raise SpecError(
            "spec.s3.iceberg.catalogURI carries credentials: a REST catalog's client "
            "credentials go in a Secret named in spec.s3.iceberg.catalogCredentialSecret"
        )
    if "://" in uri and ":" in uri.split("://", 1)[1].split("@", 1)[0] and "@" in uri:
        raise SpecError(
            "spec.s3.iceberg.catalogURI carries a password: put it in a Secret and name it in "
            "spec.s3.iceberg.catalogPasswordSecret"
        )
    password = (
        secret_key(raw.sub("catalogPasswordSecret"), "name", "key", "password")
        if raw.has("catalogPasswordSecret")
        else None
    )
    credential = (
        secret_key(raw.sub("catalogCredentialSecret"), "name", "key", "credential")
        if raw.has("catalogCredentialSecret")
        else None
    )
    if credential is not None and not _is_rest(uri):
        raise SpecError(
            "spec.s3.iceberg.catalogCredentialSecret is for a REST catalog: set "
            "spec.s3.iceberg.catalogURI to its http(s):// URL"
        )
    warehouse = texts["warehouse"] or ""
    if warehouse and not _is_rest(uri) and not warehouse.startswith(("s3://", "s3a://")):
        raise SpecError(
            f"spec.s3.iceberg.warehouse {warehouse!r}: an SQL catalog's warehouse is an s3:// "
            "location (a warehouse name is for a REST catalog)"
        )
    if password is not None and _is_rest(uri):
        raise SpecError(
            "spec.s3.iceberg.catalogPasswordSecret is an SQL catalog's database password; a REST "
            "catalog (catalogURI http(s)://) takes spec.s3.iceberg.catalogCredentialSecret"
        )
    return IcebergSpec(
        catalog_uri=texts["catalogURI"],
        catalog_password=password,
        catalog_credential=credential,
        catalog_name=texts["catalogName"],
        warehouse=texts["warehouse"],
        namespace=texts["namespace"],
        tick_table=texts["tickTable"],
        orderbook_table=texts["orderbookTable"],
        symbol_buckets=raw.integer("symbolBuckets", 0, 0, 1024)
        if raw.has("symbolBuckets")
        else None,
    )


def _parse_s3(root: Reader) -> S3Spec:
    """spec.s3: the cold path (Parquet on S3)."""
    s3_raw = root.sub("s3")
    s3_enabled = s3_raw.flag("enabled", False)
    creds = s3_raw.sub("credentialsSecret") if s3_raw.has("credentialsSecret") else None
    endpoint = s3_raw.text("endpointURL", "")
    if endpoint and not ENDPOINT_URL.fullmatch(endpoint):
        raise SpecError(
            f"spec.s3.endpointURL {endpoint!r}: expected http(s)://host[:port], no spaces or "
            "control characters (empty: AWS)"
        )
    s3 = S3Spec(
        enabled=s3_enabled,
        bucket=s3_raw.text("bucket", ""),
        region=s3_raw.text("region", "us-east-1"),
        prefix=s3_raw.text("prefix", "market-data"),
        endpoint_url=endpoint,
        access_key_id=secret_key(creds, "name", "accessKeyIdKey", "AWS_ACCESS_KEY_ID")
        if creds
        else None,
        secret_access_key=secret_key(creds, "name", "secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")
        if creds
        else None,
        batch_size=s3_raw.integer("batchSize", 10000, 1, 10_000_000),
        batch_timeout_sec=s3_raw.integer("batchTimeoutSeconds", 60, 1, 3600),
        orderbook_levels=s3_raw.text("orderbookLevels", "typed", choices=("typed", "json")),  # type: ignore[arg-type]
        timestamp_unit=s3_raw.text("timestampUnit", "ns", choices=("ns", "us")),  # type: ignore[arg-type]
        format=s3_raw.text("format", "parquet", choices=("parquet", "iceberg")),  # type: ignore[arg-type]
        iceberg=_parse_iceberg(s3_raw.sub("iceberg")),
    )
    check_key_name("spec.s3.prefix", s3.prefix)
    if s3.enabled and not s3.bucket:
        raise SpecError("spec.s3.bucket is required when spec.s3.enabled is true")
    return s3


def _parse_batching(root: Reader) -> BatchingSpec:
    """spec.batching: batch and buffer sizes, consumers per pod."""
    batch_raw = root.sub("batching")
    batching = BatchingSpec(
        batch_size=batch_raw.integer("batchSize", 1000, 1, 1_000_000),
        batch_timeout_ms=batch_raw.integer("batchTimeoutMs", 1000, 1, 600_000),
        max_buffer_size=batch_raw.integer("maxBufferSize", 500_000, 1, 100_000_000),
        num_consumers=batch_raw.integer("numConsumers", 1, 1, 64),
    )
    if batching.max_buffer_size < batching.batch_size:
        # A buffer that pauses the consumer before one batch is full never flushes by size.
        raise SpecError(
            f"spec.batching.maxBufferSize ({batching.max_buffer_size}) must be at least "
            f"spec.batching.batchSize ({batching.batch_size})"
        )
    return batching


def _parse_autoscaling(root: Reader) -> AutoscalingSpec:
    """spec.autoscaling: HPA or operator mode, with KEDA's options."""
    auto_raw = root.sub("autoscaling")
    autoscaling = AutoscalingSpec(
        enabled=auto_raw.flag("enabled", False),
        mode=auto_raw.text("mode", "hpa", choices=("hpa", "operator")),  # type: ignore[arg-type]
        min_replicas=auto_raw.integer("minReplicas", 1, 1, 1000),
        max_replicas=auto_raw.integer("maxReplicas", 6, 1, 1000),
        target_lag_per_replica=auto_raw.integer("targetLagPerReplica", 10000, 1, 1_000_000_000),
        scale_down_stabilization_seconds=auto_raw.integer(
            "scaleDownStabilizationSeconds", 300, 0, 3600
        ),
        poll_interval_seconds=auto_raw.integer("pollIntervalSeconds", 15, 1, 3600),
        limit_to_partitions_with_lag=auto_raw.flag("limitToPartitionsWithLag", False),
        exclude_persistent_lag=auto_raw.flag("excludePersistentLag", False),
        offset_reset_policy=auto_raw.text(  # type: ignore[arg-type]
            "offsetResetPolicy", "earliest", choices=("earliest", "latest")
        ),
        fallback=_parse_fallback(auto_raw),
        behavior=mapping_or_none(auto_raw, "behavior"),
        activation_lag_threshold=auto_raw.integer("activationLagThreshold", 0, 0, 1_000_000_000),
        idle_replicas=auto_raw.integer("idleReplicas", 0, 0, 0)
        if auto_raw.has("idleReplicas")
        else None,
        scale_down_step=auto_raw.integer("scaleDownStep", 1, 1, 1000)
        if auto_raw.has("scaleDownStep")
        else None,
    )
    if autoscaling.enabled and autoscaling.min_replicas > autoscaling.max_replicas:
        raise SpecError(
            f"spec.autoscaling.minReplicas ({autoscaling.min_replicas}) must be <= "
            f"spec.autoscaling.maxReplicas ({autoscaling.max_replicas})"
        )
    return autoscaling


def _parse_monitoring(root: Reader) -> MonitoringSpec:
    """spec.monitoring.serviceMonitor."""
    sm_raw = root.sub("monitoring").sub("serviceMonitor")
    monitoring = MonitoringSpec(
        service_monitor=sm_raw.flag("enabled", False),
        interval=sm_raw.text("interval", "30s"),
        labels=sm_raw.text_map("labels"),
    )
    return monitoring


def _parse_network_policy(root: Reader) -> NetworkPolicySpec:
    """spec.networkPolicy."""
    raw = root.sub("networkPolicy")
    return NetworkPolicySpec(
        enabled=raw.flag("enabled", False),
        metrics_from=objects(raw, "metricsFrom"),
        egress=objects(raw, "egress"),
    )


def _parse_pdb(root: Reader) -> PDBSpec:
    """spec.podDisruptionBudget."""
    pdb_raw = root.sub("podDisruptionBudget")
    max_unavailable = pdb_raw.data.get("maxUnavailable", 1)
    if not isinstance(max_unavailable, int | str) or isinstance(max_unavailable, bool):
        raise SpecError(
            f"spec.podDisruptionBudget.maxUnavailable must be an integer or a percentage, "
            f"got {max_unavailable!r}"
        )
    pdb = PDBSpec(enabled=pdb_raw.flag("enabled", True), max_unavailable=max_unavailable)
    return pdb


def _parse_scheduling_lists(
    root: Reader,
) -> tuple[tuple[Mapping[str, Any], ...], tuple[str, ...]]:
    """spec.tolerations and spec.imagePullSecrets (the names)."""
    tolerations = root.data.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise SpecError("spec.tolerations must be a list of objects")
    pull_secrets = root.data.get("imagePullSecrets") or []
    if not isinstance(pull_secrets, list) or not all(
        isinstance(s, Mapping) and isinstance(s.get("name"), str) for s in pull_secrets
    ):
        raise SpecError("spec.imagePullSecrets must be a list of {name: ...}")
    return tuple(dict(t) for t in tolerations), tuple(p["name"] for p in pull_secrets)


def _parse_service_account(root: Reader) -> Mapping[str, str] | None:
    """spec.serviceAccount: the annotations of a ServiceAccount the operator makes."""
    service_account_annotations = None
    if root.has("serviceAccount"):
        service_account_annotations = root.sub("serviceAccount").text_map("annotations")
        if root.has("serviceAccountName"):
            raise SpecError(
                "spec.serviceAccount (a ServiceAccount the operator makes) and "
                "spec.serviceAccountName (one you manage) exclude each other"
            )
    return service_account_annotations


def parse_spec(
    name: str, namespace: str, spec: Mapping[str, Any] | None, policy: Policy = RESTRICTED
) -> RecorderSpec:
    """Validate and default a DataRecorder spec; raise SpecError with a field path if invalid.

    Repeats the CRD's own checks (an API server without CEL, or an emulator, lets them through)
    and adds what a schema cannot express: derived names and request <= limit. Then `policy`
    (restricted unless the operator runs with `--policy permissive`): every violation is named
    in one SpecError.
    """
    if not _DNS1035.match(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} "
            "characters (lower-case letters, digits, '-', starting with a letter): it names "
            "the recorder's Service"
        )
    root = Reader(spec, "spec")
    image = root.text("image")
    if not image.strip():
        raise SpecError("spec.image must not be empty")

    tolerations, pull_secrets = _parse_scheduling_lists(root)
    parsed = RecorderSpec(
        service_account_annotations=_parse_service_account(root),
        name=name,
        namespace=namespace,
        image=image,
        image_pull_policy=root.text(
            "imagePullPolicy", "IfNotPresent", choices=("Always", "IfNotPresent", "Never")
        ),
        image_pull_secrets=pull_secrets,
        replicas=root.integer("replicas", 1, 0, 1000),
        log_level=root.text("logLevel", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        shutdown_timeout_seconds=root.integer("shutdownTimeoutSeconds", 30, 1, 3600),
        service_account_name=root.opt_text("serviceAccountName"),
        pod_annotations=root.text_map("podAnnotations"),
        pod_labels=root.text_map("podLabels"),
        node_selector=root.text_map("nodeSelector"),
        tolerations=tolerations,
        priority_class_name=root.opt_text("priorityClassName"),
        kafka=parse_kafka(root, name, namespace),
        timescaledb=_parse_timescaledb(root),
        s3=_parse_s3(root),
        batching=_parse_batching(root),
        resources=_parse_resources(root.sub("resources")),
        autoscaling=_parse_autoscaling(root),
        monitoring=_parse_monitoring(root),
        pdb=_parse_pdb(root),
        pod=_parse_pod_template(root),
        network_policy=_parse_network_policy(root),
        state=root.text("state", "running", choices=STATES),  # type: ignore[arg-type]
    )
    sasl = parsed.kafka.sasl
    auto = parsed.autoscaling
    if auto.enabled and auto.mode == "operator" and sasl and sasl.mechanism in TOKEN_MECHANISMS:
        raise SpecError(
            "spec.autoscaling.mode operator reads the lag with the operator's own Kafka login, "
            f"and spec.kafka.sasl.mechanism {sasl.mechanism} gives it none (the token is the "
            "recorder pods' own): use autoscaling.mode hpa, which scales on the recorders' "
            "lag metrics"
        )
    violations = policy_violations(root.data, policy)
    if violations:
        raise SpecError(f"refused by policy {policy.mode}: " + "; ".join(violations))
    return parsed
