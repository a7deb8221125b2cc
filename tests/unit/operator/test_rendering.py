"""Rendered children of the example specs: valid Kubernetes objects with the right content."""

from __future__ import annotations

import dataclasses
from typing import Any

import kubernetes_validate
import pytest
from datarecorder_operator import drift, environment, rendering, workload
from datarecorder_operator.spec import RecorderSpec

from tests.unit.operator.helpers import K8S_VERSION, example_spec

# The recorder's environment contract (recorder/runtime/settings.py): nothing else may be rendered.
CONFIG_ENV = {
    "KAFKA_BROKERS", "KAFKA_GROUP_ID", "KAFKA_TOPICS", "TIMESCALEDB_HOST", "TIMESCALEDB_PORT",
    "TIMESCALEDB_USER", "TIMESCALEDB_DB", "S3_WRITE_ENABLED", "S3_BUCKET", "S3_REGION",
    "S3_PREFIX", "S3_ENDPOINT_URL", "BATCH_SIZE", "BATCH_TIMEOUT_MS", "S3_BATCH_SIZE",
    "S3_BATCH_TIMEOUT_SEC", "DB_WRITE_WORKERS", "MAX_BUFFER_SIZE", "NUM_CONSUMERS", "HTTP_PORT",
    "LOG_LEVEL", "PARQUET_ORDERBOOK_LEVELS", "PARQUET_TIMESTAMP_UNIT", "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM", "KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE",
    "SHUTDOWN_TIMEOUT_SEC", "DB_WRITE_ENABLED", "TIMESCALEDB_SSLMODE", "KAFKA_AUTO_OFFSET_RESET",
    "PGSSLROOTCERT",
}  # fmt: skip
SECRET_ENV = {
    "TIMESCALEDB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
}  # fmt: skip


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


@pytest.fixture(params=["minimal.yaml", "full.yaml"])
def spec(request: pytest.FixtureRequest) -> RecorderSpec:
    return example_spec(request.param)


def test_every_child_validates_against_the_kubernetes_schemas(spec: RecorderSpec) -> None:
    children = rendering.render_children(spec)
    checked = 0
    for child in children:
        if child["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a Kubernetes API: checked by test_service_monitor below
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 3


def test_minimal_renders_the_always_present_children() -> None:
    kinds = [c["kind"] for c in rendering.render_children(example_spec("minimal.yaml"))]
    assert kinds == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]


def test_full_renders_every_child_but_hpa_in_operator_mode() -> None:
    spec = example_spec("full.yaml")
    kinds = [c["kind"] for c in rendering.render_children(spec)]
    assert kinds == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"]
    without_crd = rendering.render_children(spec, service_monitor_available=False)
    assert "ServiceMonitor" not in [c["kind"] for c in without_crd]


def test_hpa_scales_on_the_lag_metric() -> None:
    spec = example_spec("full.yaml")
    spec = dataclasses.replace(spec, autoscaling=dataclasses.replace(spec.autoscaling, mode="hpa"))
    children = by_kind(rendering.render_children(spec))
    hpa = children["HorizontalPodAutoscaler"]
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "datarecorder_lag_records"
    assert metric["pods"]["metric"]["selector"] == {"matchLabels": {"sink": "timescaledb"}}
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "10000"}
    assert hpa["spec"]["scaleTargetRef"]["name"] == "krx-recorder-recorder"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    # The HPA owns replicas: a fresh Deployment starts at minReplicas.
    assert children["Deployment"]["spec"]["replicas"] == 1


def test_configmap_holds_only_known_non_secret_settings(spec: RecorderSpec) -> None:
    data = rendering.render_configmap(spec)["data"]
    assert set(data) <= CONFIG_ENV
    assert not set(data) & SECRET_ENV
    assert data["HTTP_PORT"] == "8080"


def test_full_configmap_content() -> None:
    data = rendering.render_configmap(example_spec("full.yaml"))["data"]
    assert data["KAFKA_TOPICS"] == "market.tick,market.orderbook"
    assert data["KAFKA_GROUP_ID"] == "krx-recorder"
    assert data["S3_WRITE_ENABLED"] == "true"
    assert data["S3_BUCKET"] == "market-data-lake"
    assert data["KAFKA_SSL_CA_FILE"] == "/etc/datarecorder/kafka-tls/ca.crt"
    assert data["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


def test_minimal_defaults() -> None:
    data = rendering.render_configmap(example_spec("minimal.yaml"))["data"]
    assert data["KAFKA_GROUP_ID"] == "datarecorder.market-data.recorder"
    assert data["S3_WRITE_ENABLED"] == "false"
    assert data["BATCH_SIZE"] == "1000"
    assert data["BATCH_TIMEOUT_MS"] == "1000"
    assert data["MAX_BUFFER_SIZE"] == "500000"
    assert data["DB_WRITE_WORKERS"] == "4"
    assert data["NUM_CONSUMERS"] == "1"
    assert data["LOG_LEVEL"] == "INFO"
    assert "S3_BUCKET" not in data


def test_secrets_come_only_from_secret_key_refs(spec: RecorderSpec) -> None:
    container = workload.render_deployment(spec, 1)["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        assert env["name"] in SECRET_ENV
        assert set(env) == {"name", "valueFrom"}
        assert set(env["valueFrom"]) == {"secretKeyRef"}
    names = {e["name"] for e in container["env"]}
    assert "TIMESCALEDB_PASSWORD" in names


def test_full_secret_refs() -> None:
    container = workload.render_deployment(example_spec("full.yaml"), 2)["spec"]["template"][
        "spec"
    ]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs == {
        "TIMESCALEDB_PASSWORD": {"name": "timescaledb", "key": "password"},
        "AWS_ACCESS_KEY_ID": {"name": "recorder-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "recorder-s3", "key": "AWS_SECRET_ACCESS_KEY"},
        "KAFKA_SASL_USERNAME": {"name": "kafka-recorder-user", "key": "username"},
        "KAFKA_SASL_PASSWORD": {"name": "kafka-recorder-user", "key": "password"},
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/datarecorder/kafka-tls"]["readOnly"] is True


def test_deployment_is_hardened_and_probed(spec: RecorderSpec) -> None:
    deployment = workload.render_deployment(spec, 1)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["datarecorder", "run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    # Liveness never looks at a store (/health does): a database outage must not restart pods.
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"]["memory"]
    assert container["envFrom"] == [{"configMapRef": {"name": f"{spec.name}-recorder-config"}}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_termination_grace_follows_the_shutdown_deadline() -> None:
    spec = example_spec("minimal.yaml")
    assert spec.shutdown_timeout_seconds == 30
    slow = dataclasses.replace(spec, shutdown_timeout_seconds=120)
    pod = workload.render_deployment(slow, 1)["spec"]["template"]["spec"]
    assert rendering.render_configmap(slow)["data"]["SHUTDOWN_TIMEOUT_SEC"] == "120"
    assert pod["terminationGracePeriodSeconds"] == 135  # the deadline plus room to leave the group


def test_config_hash_follows_config_and_secret_refs_only() -> None:
    spec = example_spec("minimal.yaml")
    base = environment.config_hash(spec)
    assert base == environment.config_hash(example_spec("minimal.yaml"))  # deterministic
    bigger = dataclasses.replace(spec, batching=dataclasses.replace(spec.batching, batch_size=2000))
    assert environment.config_hash(bigger) != base
    other_secret = dataclasses.replace(
        spec,
        timescaledb=dataclasses.replace(
            spec.timescaledb, password=dataclasses.replace(spec.timescaledb.password, key="pw")
        ),
    )
    assert environment.config_hash(other_secret) != base
    # The image is not config: a new image rolls the pods by itself, without the hash.
    assert environment.config_hash(dataclasses.replace(spec, image="x/y:2")) == base
    annotations = workload.render_deployment(bigger, 1)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations[workload.CONFIG_HASH_ANNOTATION] == environment.config_hash(bigger)


def test_service_monitor() -> None:
    sm = rendering.render_service_monitor(example_spec("full.yaml"))
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    service = rendering.render_service(example_spec("full.yaml"))
    assert sm["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["spec"]["ports"][0]["name"] == "http"


def test_replicas_follow_the_spec_unless_an_autoscaler_owns_them() -> None:
    minimal = example_spec("minimal.yaml")
    assert by_kind(rendering.render_children(minimal))["Deployment"]["spec"]["replicas"] == 1
    full = example_spec("full.yaml")  # operator mode: keeps what the scaler set
    kept = rendering.render_children(full, current_replicas=4)
    assert by_kind(kept)["Deployment"]["spec"]["replicas"] == 4
    fresh = rendering.render_children(full)
    assert by_kind(fresh)["Deployment"]["spec"]["replicas"] == full.autoscaling.min_replicas


def test_no_apply_when_the_server_only_added_fields() -> None:
    desired = drift.stamped(workload.render_deployment(example_spec("minimal.yaml"), 1))
    actual = {
        **desired,
        "metadata": {**desired["metadata"], "uid": "u", "resourceVersion": "7"},
        "status": {"replicas": 1},
    }
    actual["spec"] = {**desired["spec"], "progressDeadlineSeconds": 600}
    assert not drift.needs_apply(desired, actual)
    assert drift.needs_apply(desired, None)  # absent: apply creates it


def test_apply_restores_an_edited_field() -> None:
    desired = drift.stamped(rendering.render_configmap(example_spec("minimal.yaml")))
    actual = {**desired, "data": {**desired["data"], "BATCH_SIZE": "5"}}
    assert drift.needs_apply(desired, actual)


def test_a_field_the_spec_dropped_changes_the_digest() -> None:
    """Everything still rendered is in place, but the last apply carried a nodeSelector: only
    the digest tells, and applying the new rendering makes the server remove it."""
    full = example_spec("full.yaml")
    before = drift.stamped(workload.render_deployment(full, 2))
    after = drift.stamped(
        workload.render_deployment(dataclasses.replace(full, node_selector={}), 2)
    )
    assert "nodeSelector" in before["spec"]["template"]["spec"]
    assert drift.needs_apply(after, before)


def test_the_digest_ignores_replicas_an_autoscaler_moves() -> None:
    full = example_spec("full.yaml")
    two = workload.render_deployment(full, 2)
    assert drift.applied_digest(two) == drift.applied_digest(workload.render_deployment(full, 5))
    assert drift.applied_digest(drift.stamped(two)) == drift.applied_digest(two)


def test_owner_reference_marks_the_controller() -> None:
    ref = rendering.owner_reference("r", "uid-1")
    assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
    assert ref["apiVersion"] == "datarecorder.dev/v1alpha1" and ref["kind"] == "DataRecorder"
