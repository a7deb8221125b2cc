"""Typed view of a DataRecorder spec: parsing, defaults and the checks the CRD schema cannot do.

Owns `RecorderSpec` and `SpecError`; pure (a mapping in, frozen dataclasses out, no I/O).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from datarecorder_operator import quantity

GROUP = "datarecorder.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DataRecorder"
PLURAL = "datarecorders"

# The children's Service is `<name>-recorder` (9 characters more), and a Service name must be
# a DNS-1035 label (at most 63), hence 54; the CRD enforces the same with a CEL rule.
MAX_NAME_LENGTH = 54
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
ScalingMode = Literal["hpa", "operator"]
# spec.state, as Strimzi's KafkaConnector `state`: stopped scales the recorders to 0 and
# suspends autoscaling. No `paused` (pods kept, consumer paused): the recorder has no setting
# that pauses its consumer while keeping the pod, and this is the place to add it once it has.
RecorderState = Literal["running", "stopped"]
STATES: tuple[RecorderState, ...] = ("running", "stopped")


class SpecError(ValueError):
    """A spec the operator cannot render; the message names the field and what is wrong."""


@dataclasses.dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class KafkaTLS:
    """The CA to trust and an optional client certificate, each from its own Secret (as
    Strimzi keeps `<cluster>-cluster-ca-cert` apart from a `KafkaUser`'s Secret)."""

    ca: SecretKey
    cert: SecretKey | None  # the client certificate and key live in one Secret
    key: SecretKey | None

    @property
    def secret_name(self) -> str:
        return self.ca.name


@dataclasses.dataclass(frozen=True)
class KafkaSASL:
    mechanism: str
    username: SecretKey | str  # a Secret key, or the literal name (a Strimzi KafkaUser's)
    password: SecretKey
    # A Secret key holding a whole `sasl.jaas.config` line (Strimzi's KafkaUser Secret has one);
    # when set, username and password come from it and the fields above are not used.
    jaas_config: SecretKey | None = None
    # PLAIN over SASL_PLAINTEXT sends the password in clear text: refused unless this is set.
    allow_plaintext_password: bool = False


@dataclasses.dataclass(frozen=True)
class KafkaSpec:
    brokers: tuple[str, ...]
    topics: tuple[str, ...]
    group_id: str
    security_protocol: SecurityProtocol
    sasl: KafkaSASL | None
    tls: KafkaTLS | None


@dataclasses.dataclass(frozen=True)
class TimescaleSpec:
    host: str
    port: int
    database: str
    user: str
    password: SecretKey
    write_workers: int
    write_enabled: bool = True
    ssl_mode: str = "prefer"
    ca: SecretKey | None = None  # the CA of the server's certificate (verify-ca / verify-full)


@dataclasses.dataclass(frozen=True)
class S3Spec:
    enabled: bool
    bucket: str
    region: str
    prefix: str
    endpoint_url: str
    access_key_id: SecretKey | None
    secret_access_key: SecretKey | None
    batch_size: int
    batch_timeout_sec: int
    orderbook_levels: Literal["typed", "json"]
    timestamp_unit: Literal["ns", "us"]


@dataclasses.dataclass(frozen=True)
class BatchingSpec:
    batch_size: int
    batch_timeout_ms: int
    max_buffer_size: int
    num_consumers: int


@dataclasses.dataclass(frozen=True)
class Fallback:
    """KEDA's fallback: replicas to run once `failure_threshold` lag reads in a row failed."""

    failure_threshold: int
    replicas: int


@dataclasses.dataclass(frozen=True)
class AutoscalingSpec:
    enabled: bool
    mode: ScalingMode
    min_replicas: int
    max_replicas: int
    target_lag_per_replica: int
    scale_down_stabilization_seconds: int
    poll_interval_seconds: int
    limit_to_partitions_with_lag: bool
    offset_reset_policy: Literal["earliest", "latest"]
    fallback: Fallback | None = None
    behavior: Mapping[str, Any] | None = None  # the HPA's behavior as given (mode hpa)
    activation_lag_threshold: int = 0
    idle_replicas: int | None = None  # KEDA's idleReplicaCount (0: scale to zero when idle)
    scale_down_step: int | None = None  # pods fewer per stabilization window at most
    exclude_persistent_lag: bool = False  # KEDA's: lag whose commit does not move is left out


@dataclasses.dataclass(frozen=True)
class MonitoringSpec:
    service_monitor: bool
    interval: str
    labels: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class NetworkPolicySpec:
    """spec.networkPolicy: a NetworkPolicy for this DataRecorder's pods, rendered by the
    operator. Ingress: port 8080 (probes, /metrics) from `metrics_from` (empty: anyone);
    egress, when rules are given: DNS and those rules only."""

    enabled: bool = False
    metrics_from: tuple[Mapping[str, Any], ...] = ()
    egress: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class PDBSpec:
    enabled: bool
    max_unavailable: int | str


@dataclasses.dataclass(frozen=True)
class PodTemplate:
    """What the recorder pods take from the spec as it is (Strimzi's `template`, flat)."""

    affinity: Mapping[str, Any] | None = None
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    env_from: tuple[Mapping[str, Any], ...] = ()
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    automount_service_account_token: bool = False
    pod_security_context: Mapping[str, Any] | None = None  # None: the operator's default
    container_security_context: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class RecorderSpec:
    """Everything the renderers need, defaults applied, validated."""

    name: str
    namespace: str
    image: str
    image_pull_policy: str
    image_pull_secrets: tuple[str, ...]
    replicas: int
    log_level: str
    shutdown_timeout_seconds: int
    service_account_name: str | None
    pod_annotations: Mapping[str, str]
    pod_labels: Mapping[str, str]
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    priority_class_name: str | None
    kafka: KafkaSpec
    timescaledb: TimescaleSpec
    s3: S3Spec
    batching: BatchingSpec
    resources: Mapping[str, Mapping[str, str]]
    autoscaling: AutoscalingSpec
    monitoring: MonitoringSpec
    pdb: PDBSpec
    pod: PodTemplate = dataclasses.field(default_factory=lambda: PodTemplate())
    # spec.serviceAccount: the operator makes a ServiceAccount with these annotations (IRSA's
    # eks.amazonaws.com/role-arn, GKE's iam.gke.io/gcp-service-account); None: it makes none.
    service_account_annotations: Mapping[str, str] | None = None
    paused: bool = False  # annotation datarecorder.dev/paused: "true"
    network_policy: NetworkPolicySpec = dataclasses.field(default_factory=NetworkPolicySpec)
    state: RecorderState = "running"

    @property
    def stopped(self) -> bool:
        return self.state == "stopped"

    @property
    def operator_scaled(self) -> bool:
        """The operator moves the replicas from lag (never while stopped)."""
        return self.autoscaling.enabled and self.autoscaling.mode == "operator" and not self.stopped

    @property
    def hpa_scaled(self) -> bool:
        """An HPA child moves the replicas (none while stopped: it would scale them back up)."""
        return self.autoscaling.enabled and self.autoscaling.mode == "hpa" and not self.stopped


class _Reader:
    """Reads one nested mapping with a field path for messages (`spec.kafka.brokers`)."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(f"{path} must be an object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path

    def sub(self, key: str) -> _Reader:
        return _Reader(self.data.get(key), f"{self.path}.{key}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None, *, choices: Sequence[str] = ()) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise SpecError(f"{self.path}.{key} is required")
        if not isinstance(value, str):
            raise SpecError(f"{self.path}.{key} must be a string, got {value!r}")
        if choices and value not in choices:
            raise SpecError(f"{self.path}.{key} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.data.get(key, default)
        # bool is an int subclass in Python; YAML `true` must not pass as 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpecError(f"{self.path}.{key} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise SpecError(f"{self.path}.{key} must be between {lo} and {hi}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"{self.path}.{key} must be true or false, got {value!r}")
        return value

    def text_list(self, key: str, default: Sequence[str] | None = None) -> tuple[str, ...]:
        value = self.data.get(key, default)
        if value is None:
            raise SpecError(f"{self.path}.{key} is required")
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{self.path}.{key} must be a list of strings, got {value!r}")
        if not value:
            raise SpecError(f"{self.path}.{key} must not be empty")
        if len(set(value)) != len(value):
            raise SpecError(f"{self.path}.{key} has duplicates: {value!r}")
        return tuple(value)

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise SpecError(f"{self.path}.{key} must map strings to strings, got {value!r}")
        return dict(value)


def parse_quantity(value: str | int | float, field: str) -> Decimal:
    """A Kubernetes quantity ("500m", "1Gi", 2) as a Decimal in base units."""
    try:
        return quantity.parse(value)
    except ValueError as exc:
        raise SpecError(f"{field} is not a Kubernetes quantity: {str(value)!r}") from exc


def _parse_resources(raw: _Reader) -> dict[str, dict[str, str]]:
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


def _secret_key(raw: _Reader, name_field: str, key_field: str, default_key: str) -> SecretKey:
    return SecretKey(name=raw.text(name_field), key=raw.text(key_field, default_key))


def _parse_sasl(kafka_raw: _Reader, protocol: str) -> KafkaSASL | None:
    """SASL credentials: the password always from a Secret; the username from the same Secret
    (`usernameKey`) or literal (`username`: a Strimzi KafkaUser's Secret has no username key);
    or both from a `sasl.jaas.config` line in the Secret (`jaasConfigKey`)."""
    if not protocol.startswith("SASL_"):
        return None
    if not kafka_raw.has("sasl"):
        raise SpecError(f"spec.kafka.sasl is required when securityProtocol is {protocol}")
    raw = kafka_raw.sub("sasl")
    secret = raw.text("secretName")
    literal = raw.opt_text("username")
    jaas_key = raw.opt_text("jaasConfigKey")
    if jaas_key is not None and literal is not None:
        raise SpecError(
            "spec.kafka.sasl: username and jaasConfigKey exclude each other "
            "(the JAAS config carries the username)"
        )
    mechanism = raw.text(
        "mechanism", "SCRAM-SHA-512", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    )
    allow_plaintext = raw.flag("allowPlaintextPassword", False)
    if mechanism == "PLAIN" and protocol == "SASL_PLAINTEXT" and not allow_plaintext:
        raise SpecError(
            "spec.kafka.sasl.mechanism PLAIN over securityProtocol SASL_PLAINTEXT sends the "
            "password in clear text: use SASL_SSL or SCRAM, or set "
            "spec.kafka.sasl.allowPlaintextPassword: true"
        )
    # The CRD defaults usernameKey, so a literal username simply wins over it.
    return KafkaSASL(
        allow_plaintext_password=allow_plaintext,
        jaas_config=SecretKey(secret, jaas_key) if jaas_key is not None else None,
        mechanism=mechanism,
        username=literal
        if literal is not None
        else SecretKey(secret, raw.text("usernameKey", "username")),
        password=SecretKey(secret, raw.text("passwordKey", "password")),
    )


def _parse_tls(raw: _Reader) -> KafkaTLS:
    """Either one Secret (`secretName` + `caKey`/`certKey`/`keyKey`) or Strimzi's shape:
    `trustedCertificates: [{secretName, certificate}]` and `certificateAndKey: {secretName,
    certificate, key}`, each naming its own Secret."""
    strimzi = raw.has("trustedCertificates") or raw.has("certificateAndKey")
    if strimzi and (raw.has("secretName") or raw.has("certKey") or raw.has("keyKey")):
        raise SpecError(
            "spec.kafka.tls: use either secretName/caKey/certKey/keyKey or "
            "trustedCertificates/certificateAndKey, not both"
        )
    if not strimzi:
        cert_key, key_key = raw.opt_text("certKey"), raw.opt_text("keyKey")
        if (cert_key is None) != (key_key is None):
            raise SpecError("spec.kafka.tls.certKey and spec.kafka.tls.keyKey must be set together")
        secret = raw.text("secretName")
        return KafkaTLS(
            ca=SecretKey(secret, raw.text("caKey", "ca.crt")),
            cert=SecretKey(secret, cert_key) if cert_key else None,
            key=SecretKey(secret, key_key) if key_key else None,
        )
    trusted = raw.data.get("trustedCertificates")
    if not isinstance(trusted, list) or len(trusted) != 1:
        raise SpecError(
            "spec.kafka.tls.trustedCertificates must hold exactly one {secretName, certificate} "
            "(the recorder trusts one CA file)"
        )
    ca_raw = _Reader(trusted[0], "spec.kafka.tls.trustedCertificates[0]")
    ca = SecretKey(ca_raw.text("secretName"), ca_raw.text("certificate", "ca.crt"))
    if not raw.has("certificateAndKey"):
        return KafkaTLS(ca=ca, cert=None, key=None)
    pair = raw.sub("certificateAndKey")
    secret = pair.text("secretName")
    return KafkaTLS(
        ca=ca,
        cert=SecretKey(secret, pair.text("certificate", "user.crt")),
        key=SecretKey(secret, pair.text("key", "user.key")),
    )


def _parse_fallback(auto_raw: _Reader) -> Fallback | None:
    if not auto_raw.has("fallback"):
        return None
    raw = auto_raw.sub("fallback")
    if not raw.has("replicas"):
        raise SpecError("spec.autoscaling.fallback.replicas is required")
    return Fallback(
        failure_threshold=raw.integer("failureThreshold", 3, 1, 100),
        replicas=raw.integer("replicas", 1, 0, 1000),
    )


def _objects(root: _Reader, key: str) -> tuple[Mapping[str, Any], ...]:
    value = root.data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(f"{root.path}.{key} must be a list of objects")
    return tuple(dict(v) for v in value)


def _object(root: _Reader, key: str) -> Mapping[str, Any] | None:
    value = root.data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise SpecError(f"{root.path}.{key} must be an object")
    return None if value is None else dict(value)


# Names the operator gives its own env entries and volumes: an extra one of the same name would
# silently shadow (or be shadowed by) the operator's.
RESERVED_ENV = frozenset(
    {"TIMESCALEDB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAFKA_SASL_USERNAME",
     "KAFKA_SASL_PASSWORD", "PGSSLROOTCERT"}
)  # fmt: skip
RESERVED_VOLUMES = frozenset({"tmp", "kafka-tls", "kafka-client-tls", "db-ca"})


def _parse_pod_template(root: _Reader) -> PodTemplate:
    template = PodTemplate(
        affinity=_object(root, "affinity"),
        topology_spread_constraints=_objects(root, "topologySpreadConstraints"),
        env=_objects(root, "env"),
        env_from=_objects(root, "envFrom"),
        volumes=_objects(root, "volumes"),
        volume_mounts=_objects(root, "volumeMounts"),
        automount_service_account_token=root.flag("automountServiceAccountToken", False),
        pod_security_context=_object(root, "podSecurityContext"),
        container_security_context=_object(root, "containerSecurityContext"),
    )
    for i, entry in enumerate(template.env):
        if entry.get("name") in RESERVED_ENV:
            raise SpecError(f"spec.env[{i}].name {entry.get('name')!r} is set by the operator")
    for i, volume in enumerate(template.volumes):
        if volume.get("name") in RESERVED_VOLUMES:
            raise SpecError(f"spec.volumes[{i}].name {volume.get('name')!r} is the operator's")
    return template


PAUSED_ANNOTATION = "datarecorder.dev/paused"
# Set on the DataRecorder to any new value: the recorder pods roll once per distinct value (the
# value is copied to the pod template under the same key, as `kubectl rollout restart` does
# with its own annotation).
RESTART_ANNOTATION = "datarecorder.dev/restart"

# A Secret a DataRecorder may use names the DataRecorders it is for:
# `datarecorder.dev/recorders: "rec, other"` ("*": every DataRecorder of its namespace). The
# operator reads only such Secrets (its lag reads), and under the restricted policy renders
# recorder pods that reference only such Secrets: a spec cannot hand its author a Secret of the
# namespace that its owner did not mark.
SECRET_MARK_ANNOTATION = "datarecorder.dev/recorders"
ANY_RECORDER = "*"


def secret_marked_for(secret: Mapping[str, Any] | None, recorder: str) -> bool:
    """Whether the Secret object `secret` is marked for the DataRecorder named `recorder`."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    names = {n.strip() for n in str(annotations.get(SECRET_MARK_ANNOTATION, "")).split(",")}
    return recorder in names or ANY_RECORDER in names


def restart_requested(annotations: Mapping[str, str] | None) -> str | None:
    """The value of the DataRecorder's restart annotation, None when it has none."""
    value = (annotations or {}).get(RESTART_ANNOTATION)
    return None if value is None else str(value)


def is_paused(annotations: Mapping[str, str] | None) -> bool:
    """Strimzi's convention: reconciliation stops while the annotation is "true"."""
    return (annotations or {}).get(PAUSED_ANNOTATION, "").strip().lower() == "true"


def _parse_kafka(root: _Reader, name: str, namespace: str) -> KafkaSpec:
    """spec.kafka: brokers, topics, group and how to authenticate."""
    kafka_raw = root.sub("kafka")
    protocol = kafka_raw.text(
        "securityProtocol", "PLAINTEXT", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    )
    sasl = _parse_sasl(kafka_raw, protocol)
    tls: KafkaTLS | None = None
    if kafka_raw.has("tls"):
        if protocol not in ("SSL", "SASL_SSL"):
            raise SpecError("spec.kafka.tls is only used with securityProtocol SSL or SASL_SSL")
        tls = _parse_tls(kafka_raw.sub("tls"))
    kafka = KafkaSpec(
        brokers=kafka_raw.text_list("brokers"),
        topics=kafka_raw.text_list("topics", ["market.tick", "market.orderbook"]),
        group_id=kafka_raw.text("groupId", f"datarecorder.{namespace}.{name}"),
        security_protocol=protocol,  # type: ignore[arg-type]  # checked by choices above
        sasl=sasl,
        tls=tls,
    )
    _check_key_name("spec.kafka.groupId", kafka.group_id)
    for broker in kafka.brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SpecError(f"spec.kafka.brokers: {broker!r} is not host:port")
    return kafka


def _parse_timescaledb(root: _Reader) -> TimescaleSpec:
    """spec.timescaledb: where the hot path writes, and how securely."""
    db_raw = root.sub("timescaledb")
    timescaledb = TimescaleSpec(
        host=db_raw.text("host"),
        port=db_raw.integer("port", 5432, 1, 65535),
        database=db_raw.text("database", "marketdata"),  # the recorder's TIMESCALEDB_DB default
        user=db_raw.text("user", "recorder"),
        password=_secret_key(db_raw.sub("passwordSecret"), "name", "key", "password"),
        write_workers=db_raw.integer("writeWorkers", 4, 1, 64),
        write_enabled=db_raw.flag("writeEnabled", True),
        ssl_mode=db_raw.text(
            "sslMode",
            "prefer",
            choices=("disable", "prefer", "require", "verify-ca", "verify-full"),
        ),
        ca=_secret_key(db_raw.sub("caSecret"), "name", "key", "ca.crt")
        if db_raw.has("caSecret")
        else None,
    )
    return timescaledb


def _parse_s3(root: _Reader) -> S3Spec:
    """spec.s3: the cold path (Parquet on S3)."""
    s3_raw = root.sub("s3")
    s3_enabled = s3_raw.flag("enabled", False)
    creds = s3_raw.sub("credentialsSecret") if s3_raw.has("credentialsSecret") else None
    s3 = S3Spec(
        enabled=s3_enabled,
        bucket=s3_raw.text("bucket", ""),
        region=s3_raw.text("region", "us-east-1"),
        prefix=s3_raw.text("prefix", "market-data"),
        endpoint_url=s3_raw.text("endpointURL", ""),
        access_key_id=_secret_key(creds, "name", "accessKeyIdKey", "AWS_ACCESS_KEY_ID")
        if creds
        else None,
        secret_access_key=_secret_key(creds, "name", "secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")
        if creds
        else None,
        batch_size=s3_raw.integer("batchSize", 10000, 1, 10_000_000),
        batch_timeout_sec=s3_raw.integer("batchTimeoutSeconds", 60, 1, 3600),
        orderbook_levels=s3_raw.text("orderbookLevels", "typed", choices=("typed", "json")),  # type: ignore[arg-type]
        timestamp_unit=s3_raw.text("timestampUnit", "ns", choices=("ns", "us")),  # type: ignore[arg-type]
    )
    _check_key_name("spec.s3.prefix", s3.prefix)
    if s3.enabled and not s3.bucket:
        raise SpecError("spec.s3.bucket is required when spec.s3.enabled is true")
    return s3


def _parse_batching(root: _Reader) -> BatchingSpec:
    """spec.batching: batch and buffer sizes, consumers per pod."""
    batch_raw = root.sub("batching")
    batching = BatchingSpec(
        batch_size=batch_raw.integer("batchSize", 1000, 1, 1_000_000),
        batch_timeout_ms=batch_raw.integer("batchTimeoutMs", 1000, 1, 600_000),
        max_buffer_size=batch_raw.integer("maxBufferSize", 100_000, 1, 100_000_000),
        num_consumers=batch_raw.integer("numConsumers", 1, 1, 64),
    )
    if batching.max_buffer_size < batching.batch_size:
        # A buffer that pauses the consumer before one batch is full never flushes by size.
        raise SpecError(
            f"spec.batching.maxBufferSize ({batching.max_buffer_size}) must be at least "
            f"spec.batching.batchSize ({batching.batch_size})"
        )
    return batching


def _parse_autoscaling(root: _Reader) -> AutoscalingSpec:
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
        behavior=_object(auto_raw, "behavior"),
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


def _parse_monitoring(root: _Reader) -> MonitoringSpec:
    """spec.monitoring.serviceMonitor."""
    sm_raw = root.sub("monitoring").sub("serviceMonitor")
    monitoring = MonitoringSpec(
        service_monitor=sm_raw.flag("enabled", False),
        interval=sm_raw.text("interval", "30s"),
        labels=sm_raw.text_map("labels"),
    )
    return monitoring


def _parse_network_policy(root: _Reader) -> NetworkPolicySpec:
    """spec.networkPolicy."""
    raw = root.sub("networkPolicy")
    return NetworkPolicySpec(
        enabled=raw.flag("enabled", False),
        metrics_from=_objects(raw, "metricsFrom"),
        egress=_objects(raw, "egress"),
    )


def _parse_pdb(root: _Reader) -> PDBSpec:
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
    root: _Reader,
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


def _parse_service_account(root: _Reader) -> Mapping[str, str] | None:
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


# --- Guardrails (issue 21): what a tenant's DataRecorder may ask of the pods the operator makes
# with its own rights. Restricted is the default; permissive keeps the old freedom (then the
# right to create a DataRecorder is the right to create any pod in its namespace).

PolicyMode = Literal["restricted", "permissive"]
POLICY_MODES: tuple[PolicyMode, ...] = ("restricted", "permissive")

# The volume types of the Pod Security Standards' "restricted" profile: no hostPath, no
# node-level or network file systems the tenant could not mount itself.
ALLOWED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip
HOST_NAMESPACE_FIELDS = ("hostNetwork", "hostPID", "hostIPC")


@dataclasses.dataclass(frozen=True)
class Policy:
    """The operator's `--policy` and its allow-lists (the chart's `policy` value)."""

    mode: PolicyMode = "restricted"
    # Registry or repository prefixes ("ghcr.io/acme", "registry.example.com:5000/"); empty:
    # any image. A prefix matches at a path boundary: "ghcr.io/acme" does not allow
    # "ghcr.io/acme-evil/x".
    allowed_images: tuple[str, ...] = ()
    # ServiceAccounts (of the DataRecorder's namespace) that spec.serviceAccountName may name.
    allowed_service_accounts: tuple[str, ...] = ()

    @property
    def restricted(self) -> bool:
        return self.mode == "restricted"


RESTRICTED = Policy()
PERMISSIVE = Policy(mode="permissive")


def image_allowed(image: str, prefixes: Sequence[str]) -> bool:
    """Whether `image` comes from one of `prefixes` (empty: any image)."""
    if not prefixes:
        return True
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if base and (image == base or any(image.startswith(base + sep) for sep in "/:@")):
            return True
    return False


# Safe defaults that a user-supplied security context is merged onto, never replaces.
SAFE_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
SAFE_CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def merge_security_context(safe: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` laid over `safe`: a key the user sets wins (the policy has refused the unsafe
    values before), a key the user leaves out, or sets to null, keeps its safe value, and the
    dropped capabilities are always a superset of the safe ones."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in safe.items()}
    for key, value in given.items():
        if value is None and key in safe:
            continue  # null would unset it on the API server: not a way around a safe default
        if key == "capabilities" and isinstance(value, Mapping):
            safe_caps = safe.get("capabilities") or {}
            drop = [*safe_caps.get("drop", [])]
            drop += [c for c in value.get("drop") or [] if c not in drop]
            caps: dict[str, Any] = {"drop": drop}
            if value.get("add"):
                caps["add"] = list(value["add"])
            out[key] = caps
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _context_violations(path: str, ctx: Mapping[str, Any] | None) -> list[str]:
    if not ctx:
        return []
    found: list[str] = []
    if ctx.get("privileged") is True:
        found.append(f"{path}.privileged: privileged containers are not allowed")
    caps = ctx.get("capabilities")
    if isinstance(caps, Mapping) and caps.get("add"):
        found.append(f"{path}.capabilities.add: adding capabilities is not allowed")
    uid = ctx.get("runAsUser")
    if isinstance(uid, int) and not isinstance(uid, bool) and uid == 0:
        found.append(f"{path}.runAsUser: uid 0 (root) is not allowed")
    if ctx.get("runAsNonRoot") is False:
        found.append(f"{path}.runAsNonRoot: false is not allowed (the pods run as non-root)")
    if ctx.get("allowPrivilegeEscalation") is True:
        found.append(f"{path}.allowPrivilegeEscalation: true is not allowed")
    seccomp = ctx.get("seccompProfile")
    if isinstance(seccomp, Mapping) and seccomp.get("type") == "Unconfined":
        found.append(f"{path}.seccompProfile: Unconfined is not allowed")
    return found


def policy_violations(spec: RecorderSpec, raw: Mapping[str, Any], policy: Policy) -> list[str]:
    """Every way `spec` (and its raw form `raw`) breaks `policy`; empty when it keeps it.

    Restricted refuses what would let a tenant's DataRecorder run a pod the tenant could not
    create itself: privileged or root containers, added capabilities, privilege escalation,
    host namespaces, hostPath and other volume types outside `ALLOWED_VOLUME_TYPES`, images
    outside `policy.allowed_images`, ServiceAccounts (and their tokens) not meant for it.
    """
    if not policy.restricted:
        return []
    found: list[str] = []
    found += _context_violations("spec.podSecurityContext", spec.pod.pod_security_context)
    found += _context_violations(
        "spec.containerSecurityContext", spec.pod.container_security_context
    )
    for field in HOST_NAMESPACE_FIELDS:
        if raw.get(field):
            found.append(f"spec.{field}: host namespaces are not allowed")
    for i, volume in enumerate(spec.pod.volumes):
        for kind in sorted(set(volume) - {"name"} - ALLOWED_VOLUME_TYPES):
            found.append(
                f"spec.volumes[{i}]: volume type {kind} is not allowed (allowed: "
                f"{', '.join(sorted(ALLOWED_VOLUME_TYPES))})"
            )
    if not image_allowed(spec.image, policy.allowed_images):
        found.append(
            f"spec.image: {spec.image!r} is not from an allowed registry "
            f"({', '.join(policy.allowed_images)})"
        )
    sa = spec.service_account_name
    if sa is not None and sa not in policy.allowed_service_accounts:
        found.append(
            f"spec.serviceAccountName: {sa!r} is not an allowed ServiceAccount; use "
            "spec.serviceAccount (the operator makes one for the recorder) or ask for it "
            "to be listed in the operator's policy"
        )
    if (
        spec.pod.automount_service_account_token
        and spec.service_account_annotations is None
        and sa is None
    ):
        found.append(
            "spec.automountServiceAccountToken: a token is mounted only for spec.serviceAccount "
            "(the operator's) or an allowed serviceAccountName, never the namespace's default"
        )
    return found


def key_name_problem(value: str) -> str | None:
    """Why `value` (a consumer group or an S3 prefix: both end up in object keys and local
    paths) is unfit, or None: no `..`, no `/` at either edge, no control characters."""
    if ".." in value:
        return "must not contain '..'"
    if value.startswith("/") or value.endswith("/"):
        return "must not start or end with '/'"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "must not contain control characters"
    return None


def _check_key_name(path: str, value: str) -> None:
    problem = key_name_problem(value)
    if problem is not None:
        raise SpecError(f"{path} {value!r} {problem} (it becomes part of object keys and paths)")


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
    root = _Reader(spec, "spec")
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
        kafka=_parse_kafka(root, name, namespace),
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
    violations = policy_violations(parsed, root.data, policy)
    if violations:
        raise SpecError(f"refused by policy {policy.mode}: " + "; ".join(violations))
    return parsed
