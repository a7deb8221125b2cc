"""Typed view of a DataRecorder spec: the frozen dataclasses a parsed spec is made of.

Owns `RecorderSpec` and its parts, `SpecError`, the resource's API names and its annotations;
pure. `parsing.parse_spec` builds a `RecorderSpec` from the resource's spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

# Re-exported: the Secret mark is named wherever a spec's Secrets are (tests, tools).
from datarecorder_operator.policy import SECRET_MARK_ANNOTATION as SECRET_MARK_ANNOTATION

GROUP = "datarecorder.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DataRecorder"
PLURAL = "datarecorders"


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
class OAuthBearer:
    """SASL OAUTHBEARER's client-credentials grant: the token endpoint, the client id, the
    client secret in a Secret, the scope asked for (empty: none)."""

    token_endpoint_url: str
    client_id: str
    client_secret: SecretKey
    scope: str = ""


# The SASL mechanisms whose login is a username and a password (from secretName).
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Those whose login is a token: from a token endpoint, or signed with the pod's AWS identity.
TOKEN_MECHANISMS = ("OAUTHBEARER", "AWS_MSK_IAM")


@dataclasses.dataclass(frozen=True)
class KafkaSASL:
    mechanism: str
    # PLAIN and SCRAM: a Secret key, or the literal name (a Strimzi KafkaUser's); the password
    # from a Secret. None for the token mechanisms.
    username: SecretKey | str | None
    password: SecretKey | None
    # A Secret key holding a whole `sasl.jaas.config` line (Strimzi's KafkaUser Secret has one);
    # when set, username and password come from it and the fields above are not used.
    jaas_config: SecretKey | None = None
    # PLAIN (or OAUTHBEARER: the token) over SASL_PLAINTEXT sends the password in clear text:
    # refused unless this is set.
    allow_plaintext_password: bool = False
    oauthbearer: OAuthBearer | None = None  # mechanism OAUTHBEARER
    aws_region: str | None = None  # mechanism AWS_MSK_IAM: the MSK cluster's region


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

    @property
    def topic_names(self) -> tuple[str, ...]:
        """The Kafka topics (`name:kind` says a topic's kind; a Kafka name never holds ':')."""
        return tuple(topic.partition(":")[0] for topic in self.topics)


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
    # LAKE_FORMAT, and the catalog and tables of `iceberg` (None: the recorder's defaults).
    format: Literal["parquet", "iceberg"] = "parquet"
    iceberg: IcebergSpec | None = None


@dataclasses.dataclass(frozen=True)
class IcebergSpec:
    """spec.s3.iceberg: fields left out keep the recorder's defaults (None here)."""

    catalog_uri: str | None = None
    catalog_password: SecretKey | None = None  # an SQL catalog's database password
    catalog_credential: SecretKey | None = None  # a REST catalog's client_id:client_secret
    catalog_name: str | None = None
    warehouse: str | None = None
    namespace: str | None = None
    tick_table: str | None = None
    orderbook_table: str | None = None
    symbol_buckets: int | None = None


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
