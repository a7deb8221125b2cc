"""Typed view of a DataRecorder spec: parsing, defaults and the checks the CRD schema cannot do.

Owns `RecorderSpec` and `SpecError`; pure (a mapping in, frozen dataclasses out, no I/O).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from datarecorder_operator import quantity
from datarecorder_operator.policy import RESTRICTED, Policy, key_name_problem, policy_violations

# Re-exported: the Secret mark is named wherever a spec's Secrets are (tests, tools).
from datarecorder_operator.policy import SECRET_MARK_ANNOTATION as SECRET_MARK_ANNOTATION

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
# spec.state, as Strimzi's KafkaConnector `state`: paused keeps the pods (and their group
# membership) with the consumer fetching nothing (the recorder's PAUSED); stopped scales the
# recorders to 0. Both suspend autoscaling.
RecorderState = Literal["running", "paused", "stopped"]
STATES: tuple[RecorderState, ...] = ("running", "paused", "stopped")


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


# The node labels Kubernetes copies onto a pod at binding (PodTopologyLabelsAdmission, 1.33+):
# the only node labels a pod can read through the downward API.
POD_TOPOLOGY_LABELS = ("topology.kubernetes.io/zone", "topology.kubernetes.io/region")
RACK_ID = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9._]{0,61}[A-Za-z0-9])?")


@dataclasses.dataclass(frozen=True)
class KafkaRack:
    """Exactly one: `id` (a literal rack, e.g. one DataRecorder per zone) or `topology_key` (the
    pod's copy of its node's zone label, read through the downward API)."""

    id: str | None = None
    topology_key: str | None = None


@dataclasses.dataclass(frozen=True)
class KafkaSpec:
    brokers: tuple[str, ...]
    topics: tuple[str, ...]
    group_id: str
    security_protocol: SecurityProtocol
    sasl: KafkaSASL | None
    tls: KafkaTLS | None
    # spec.kafka.startFrom as the recorder's START_FROM (`time:<RFC 3339>` | `offset:<N>`);
    # None: the reset policy.
    start_from: str | None = None
    # spec.kafka.rack, the consumer's client.rack (KAFKA_CLIENT_RACK): a literal rack id, or the
    # pod label (copied from its node at binding) that the downward API reads it from.
    rack: KafkaRack | None = None


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
    def flow_paused(self) -> bool:
        """spec.state paused: the pods stay, their consumers fetch nothing (not the annotation
        datarecorder.dev/paused, which pauses the operator's reconciliation)."""
        return self.state == "paused"

    @property
    def operator_scaled(self) -> bool:
        """The operator moves the replicas from lag (only while running: lag grows while paused
        and stopped on purpose)."""
        auto = self.autoscaling
        return auto.enabled and auto.mode == "operator" and self.state == "running"

    @property
    def hpa_scaled(self) -> bool:
        """An HPA child moves the replicas (only while running: stopped, it would scale them
        back up; paused, it would scale out on the lag the pause makes)."""
        auto = self.autoscaling
        return auto.enabled and auto.mode == "hpa" and self.state == "running"


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


def restart_requested(annotations: Mapping[str, str] | None) -> str | None:
    """The value of the DataRecorder's restart annotation, None when it has none."""
    value = (annotations or {}).get(RESTART_ANNOTATION)
    return None if value is None else str(value)


def is_paused(annotations: Mapping[str, str] | None) -> bool:
    """Strimzi's convention: reconciliation stops while the annotation is "true"."""
    return (annotations or {}).get(PAUSED_ANNOTATION, "").strip().lower() == "true"


# The recorder's START_FROM time form (recorder.runtime.settings): a date-time with a zone.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
START_FROM_FORM = (
    'expected {time: "<RFC 3339 date-time with a zone>"} (e.g. {time: '
    '"2026-12-01T00:00:00Z"}) or {offset: <integer >= 0>}'
)
MAX_OFFSET = 2**63 - 1


def _exactly_one(raw: _Reader, first: str, second: str, form: str) -> None:
    """Refuse a choice object that names neither or both of its two keys, or another key."""
    unknown = sorted(set(raw.data) - {first, second})
    if unknown or raw.has(first) == raw.has(second):
        extra = f" (unknown: {', '.join(unknown)})" if unknown else ""
        raise SpecError(f"{raw.path} must name exactly one of {first} and {second}{extra}; {form}")


def parse_start_from(raw: _Reader) -> str | None:
    """spec.kafka.startFrom: where a sink without progress starts (exactly one of `time` and
    `offset`), as the recorder's START_FROM; None when absent."""
    if not raw.data:
        return None
    _exactly_one(raw, "time", "offset", START_FROM_FORM)
    if raw.has("time"):
        value = raw.text("time").strip()
        if not _RFC3339.fullmatch(value):
            raise SpecError(
                f"{raw.path}.time {value!r} is not an RFC 3339 date-time; {START_FROM_FORM}"
            )
        return f"time:{value}"
    try:
        return f"offset:{raw.integer('offset', 0, 0, MAX_OFFSET)}"
    except SpecError as exc:
        raise SpecError(f"{exc}; {START_FROM_FORM}") from None


RACK_FORM = (
    "expected {topologyKey: topology.kubernetes.io/zone} (or .../region: the node labels "
    'Kubernetes copies onto pods) or {id: "<rack>"} (e.g. {id: "eu-west-1a"})'
)


def parse_rack(raw: _Reader) -> KafkaRack | None:
    """spec.kafka.rack: the consumer's client.rack, for fetching from a replica in its zone."""
    if not raw.data:
        return None
    _exactly_one(raw, "topologyKey", "id", RACK_FORM)
    if raw.has("id"):
        value = raw.text("id")
        if not RACK_ID.fullmatch(value):
            raise SpecError(f"{raw.path}.id {value!r} is not a rack name; {RACK_FORM}")
        return KafkaRack(id=value)
    return KafkaRack(topology_key=raw.text("topologyKey", choices=POD_TOPOLOGY_LABELS))


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
        start_from=parse_start_from(kafka_raw.sub("startFrom")),
        rack=parse_rack(kafka_raw.sub("rack")),
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
    violations = policy_violations(root.data, policy)
    if violations:
        raise SpecError(f"refused by policy {policy.mode}: " + "; ".join(violations))
    return parsed
