"""Pure rendering of a DataRecorder's children: spec in, Kubernetes manifests out.

Owns the names, labels, environment and the config hash of every child; no I/O, no clock.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from datarecorder_operator import quantity
from datarecorder_operator.policy import (
    SAFE_CONTAINER_SECURITY,
    SAFE_POD_SECURITY,
    merge_security_context,
)
from datarecorder_operator.spec import (
    API_VERSION,
    KIND,
    RESTART_ANNOTATION,
    RecorderSpec,
    SecretKey,
)

Manifest = dict[str, Any]

METRIC_NAME = "datarecorder_lag_records"
HTTP_PORT = 8080
TLS_MOUNT = "/etc/datarecorder/kafka-tls"
CLIENT_TLS_MOUNT = "/etc/datarecorder/kafka-client-tls"
DB_CA_MOUNT = "/etc/datarecorder/db-ca"
CONFIG_HASH_ANNOTATION = "datarecorder.dev/config-hash"
# On a stopped recorder's Deployment: the replicas it ran before the stop, restored when
# spec.state is running again (an autoscaler's count would otherwise be lost to the 0).
REPLICAS_BEFORE_STOP_ANNOTATION = "datarecorder.dev/replicas-before-stop"
MANAGED_BY = "datarecorder-operator"
RUN_AS = 10001
# startupProbe: 5 s x 60 = 5 minutes for a cold start before liveness takes over.
STARTUP_FAILURE_THRESHOLD = 60
SHUTDOWN_MARGIN_SECONDS = 15


CHILD_SUFFIX = "-recorder"


def child_name(spec: RecorderSpec) -> str:
    """The name of every child but the ConfigMap: `<name>-recorder`, so that the children do
    not collide with the user's own objects named like the DataRecorder."""
    return f"{spec.name}{CHILD_SUFFIX}"


def configmap_name(spec: RecorderSpec) -> str:
    return f"{child_name(spec)}-config"


def selector_labels(spec: RecorderSpec) -> dict[str, str]:
    """The labels the Deployment, Service, PDB and ServiceMonitor select pods by.

    The component keeps a DataRecorder named like the Helm release (both `datarecorder` by
    default) from selecting the operator's own pod, whose component is `operator`.
    """
    return {
        "app.kubernetes.io/name": "datarecorder",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": "recorder",
    }


def selector_string(spec: RecorderSpec) -> str:
    """The label selector as a string, for the scale subresource (`status.selector`)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(spec).items()))


def common_labels(spec: RecorderSpec) -> dict[str, str]:
    return {
        **selector_labels(spec),
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def _metadata(spec: RecorderSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": common_labels(spec)}


def service_account_name(spec: RecorderSpec) -> str:
    """The pods' ServiceAccount: the user's, the one the operator makes, or the namespace's."""
    if spec.service_account_name:
        return spec.service_account_name
    return child_name(spec) if spec.service_account_annotations is not None else "default"


def render_service_account(spec: RecorderSpec) -> Manifest:
    """The recorders' own ServiceAccount, for workload identity (IRSA, GKE, Azure) on S3."""
    meta = _metadata(spec, child_name(spec))
    meta["annotations"] = dict(spec.service_account_annotations or {})
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": spec.pod.automount_service_account_token,
    }


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
    if spec.kafka.sasl is not None:
        data["KAFKA_SASL_MECHANISM"] = spec.kafka.sasl.mechanism
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
    literal: list[dict[str, Any]] = []
    if spec.kafka.sasl is not None:
        sasl = spec.kafka.sasl
        if sasl.jaas_config is not None:
            jaas = sasl.jaas_config
            refs.append(("KAFKA_SASL_JAAS_CONFIG", jaas.name, jaas.key))
        elif isinstance(sasl.username, SecretKey):
            refs.append(("KAFKA_SASL_USERNAME", sasl.username.name, sasl.username.key))
        else:  # a user name is no secret (Strimzi's is the KafkaUser's metadata.name)
            literal.append({"name": "KAFKA_SASL_USERNAME", "value": sasl.username})
        if sasl.jaas_config is None:
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


def render_configmap(spec: RecorderSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, configmap_name(spec)),
        "data": config_data(spec),
    }


def initial_replicas(spec: RecorderSpec) -> int:
    """Replicas a new Deployment starts with (autoscalers take over afterwards)."""
    if spec.autoscaling.enabled:
        return spec.autoscaling.min_replicas
    return spec.replicas


def probes() -> dict[str, Any]:
    """The recorder container's probes; what each endpoint means is in recorder/http.py.

    Liveness is /live (the event loop answers), never a store: a restart during a database
    outage would stop the S3 path too and rebalance the group. The startupProbe holds the
    liveness probe off until the HTTP server listens (imports, settings); migrations and the
    wait for Kafka then run with /live answering and /ready at 503, so no probe has to guess
    how long they take.
    """
    return {
        "startupProbe": {
            "httpGet": {"path": "/live", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": STARTUP_FAILURE_THRESHOLD,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
    }


def termination_grace_seconds(spec: RecorderSpec) -> int:
    """The kubelet's SIGKILL deadline: the recorder's own flush deadline plus room to leave
    the consumer group and close its clients (a kill before that loses no data, but it
    replays the unflushed buffers and delays the next owner's rebalance)."""
    return spec.shutdown_timeout_seconds + SHUTDOWN_MARGIN_SECONDS


def rollout_strategy(spec: RecorderSpec) -> dict[str, Any]:
    """Surge first: every pod joining or leaving rebalances the group, so keep capacity. Not
    into a pause: a paused pod is never ready (/ready names the part `paused`), so a surge
    would wait for it forever while the old pods kept recording; all are replaced at once."""
    if spec.flow_paused:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "100%"}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def render_deployment(
    spec: RecorderSpec, replicas: int | None, restart: str | None = None
) -> Manifest:
    """The recorder Deployment; `replicas=None` leaves the field to an autoscaler. `restart`
    (see `restart_value`) goes on the pod template: a new value rolls the pods once."""
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    for secret, path in tls_mounts(spec).items():
        volume = "kafka-tls" if path == TLS_MOUNT else "kafka-client-tls"
        volumes.append({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440}})
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    if spec.timescaledb.ca is not None:
        ca = spec.timescaledb.ca
        volumes.append({"name": "db-ca", "secret": {"secretName": ca.name, "defaultMode": 0o440}})
        mounts.append({"name": "db-ca", "mountPath": DB_CA_MOUNT, "readOnly": True})
    template = spec.pod
    volumes += [dict(v) for v in template.volumes]
    mounts += [dict(m) for m in template.volume_mounts]

    container: dict[str, Any] = {
        "name": "recorder",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["datarecorder", "run"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "envFrom": [
            {"configMapRef": {"name": configmap_name(spec)}},
            *(dict(e) for e in template.env_from),
        ],
        "env": secret_env(spec) + rack_env(spec) + [dict(e) for e in template.env],
        "resources": {kind: dict(values) for kind, values in spec.resources.items()},
        **probes(),
        # The user's context is laid over the safe defaults, never in their place: what it
        # leaves out stays safe (the policy refused the unsafe values it may name).
        "securityContext": merge_security_context(
            SAFE_CONTAINER_SECURITY,
            template.container_security_context
            if template.container_security_context is not None
            else {"runAsUser": RUN_AS, "runAsGroup": RUN_AS},
        ),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": merge_security_context(
            SAFE_POD_SECURITY,
            template.pod_security_context
            if template.pod_security_context is not None
            else {"runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS},
        ),
        # Recorders never call the Kubernetes API: no token unless asked (IRSA, workload
        # identity).
        "automountServiceAccountToken": template.automount_service_account_token,
    }
    if template.affinity is not None:
        pod_spec["affinity"] = dict(template.affinity)
    if template.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = [
            dict(c) for c in template.topology_spread_constraints
        ]
    # Always set: the API server copies a Deployment's deprecated `serviceAccount` (which it
    # filled in from serviceAccountName) back into an unset serviceAccountName, so dropping the
    # field would leave the old account in place. Naming "default" removes it for real.
    pod_spec["serviceAccountName"] = service_account_name(spec)
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name

    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(spec)},
        "strategy": rollout_strategy(spec),
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": {**spec.pod_labels, **common_labels(spec)},
                "annotations": {
                    **spec.pod_annotations,
                    CONFIG_HASH_ANNOTATION: config_hash(spec),
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(HTTP_PORT),
                    "prometheus.io/path": "/metrics",
                    **({RESTART_ANNOTATION: restart} if restart is not None else {}),
                },
            },
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, child_name(spec)),
        "spec": deployment_spec,
    }


def render_service(spec: RecorderSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, child_name(spec)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            # The Service exists for scraping /metrics: a recorder that is unready because a
            # store is down is exactly the one whose metrics matter.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def hpa_max_replicas(spec: RecorderSpec, partitions: int | None) -> int:
    """maxReplicas, capped where the partition count is known: a pod beyond partitions ÷
    consumers per pod would hold no partition and only add rebalances."""
    auto = spec.autoscaling
    if partitions is None:
        return auto.max_replicas
    useful = max(1, partitions // spec.batching.num_consumers)
    return max(auto.min_replicas, min(auto.max_replicas, useful))


def render_hpa(spec: RecorderSpec, partitions: int | None = None) -> Manifest:
    """An autoscaling/v2 HPA on the per-pod lag gauge (needs a Pods-metrics adapter)."""
    auto = spec.autoscaling
    behavior = (
        dict(auto.behavior)
        if auto.behavior is not None
        else {
            "scaleDown": {
                "stabilizationWindowSeconds": auto.scale_down_stabilization_seconds,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
            },
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 30}],
            },
        }
    )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, child_name(spec)),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": child_name(spec),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": hpa_max_replicas(spec, partitions),
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {
                            "name": METRIC_NAME,
                            "selector": {"matchLabels": {"sink": "timescaledb"}},
                        },
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(auto.target_lag_per_replica),
                        },
                    },
                }
            ],
            "behavior": behavior,
        },
    }


def render_pdb(spec: RecorderSpec) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, child_name(spec)),
        "spec": {
            "maxUnavailable": spec.pdb.max_unavailable,
            "selector": {"matchLabels": selector_labels(spec)},
            # Paused pods are unready by design: they must not block a node's drain.
            **({"unhealthyPodEvictionPolicy": "AlwaysAllow"} if spec.flow_paused else {}),
        },
    }


# Egress to the cluster's DNS (kube-dns in kube-system), always allowed once egress is limited.
DNS_EGRESS: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}


def render_network_policy(spec: RecorderSpec) -> Manifest:
    """This DataRecorder's pods: ingress on the HTTP port only (from spec.networkPolicy
    .metricsFrom, else anyone); egress, when rules are given, DNS and those rules only."""
    ingress: dict[str, Any] = {"ports": [{"port": HTTP_PORT, "protocol": "TCP"}]}
    if spec.network_policy.metrics_from:
        ingress["from"] = [dict(p) for p in spec.network_policy.metrics_from]
    body: dict[str, Any] = {
        "podSelector": {"matchLabels": selector_labels(spec)},
        "policyTypes": ["Ingress"],
        "ingress": [ingress],
    }
    if spec.network_policy.egress:
        body["policyTypes"] = ["Ingress", "Egress"]
        body["egress"] = [DNS_EGRESS, *(dict(r) for r in spec.network_policy.egress)]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, child_name(spec)),
        "spec": body,
    }


def render_service_monitor(spec: RecorderSpec) -> Manifest:
    meta = _metadata(spec, child_name(spec))
    meta["labels"] = {**spec.monitoring.labels, **meta["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(spec)},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": spec.monitoring.interval}
            ],
        },
    }


def applies_replicas(deployment: Mapping[str, Any], manager: str) -> bool:
    """Whether `manager`'s server-side apply still owns the Deployment's `spec.replicas`.

    An HPA (or `kubectl scale`, or the operator's own scale patch) writes replicas through an
    update, and the API server then moves the field's ownership to that writer.
    """
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            return True
    return False


def restart_value(
    annotations: Mapping[str, str] | None, deployment: Mapping[str, Any] | None
) -> str | None:
    """The restart value for the pod template: the DataRecorder's annotation, or, once that is
    removed, the value the Deployment's template already carries (removing the annotation must
    not roll the pods again)."""
    asked = (annotations or {}).get(RESTART_ANNOTATION)
    if asked is not None:
        return str(asked)
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    kept = (template.get("metadata") or {}).get("annotations") or {}
    return None if kept.get(RESTART_ANNOTATION) is None else str(kept[RESTART_ANNOTATION])


def replicas_before_stop(deployment: Mapping[str, Any] | None) -> int | None:
    """The count a stopped Deployment remembers (`REPLICAS_BEFORE_STOP_ANNOTATION`), if any."""
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    value = str(annotations.get(REPLICAS_BEFORE_STOP_ANNOTATION, ""))
    return int(value) if value.isdigit() else None


def deployment_replicas(
    spec: RecorderSpec,
    *,
    current_replicas: int | None = None,
    replicas_owned_elsewhere: bool = False,
    before_stop: int | None = None,
) -> int | None:
    """The Deployment's `spec.replicas` to apply (None: left to the autoscaler that owns it).

    Stopped: 0, whoever owned the field (the forced apply takes it back; the HPA is not
    rendered, the operator does not scale). Running again after a stop (`before_stop` is
    known) with autoscaling: the count before the stop, within min and max; without
    autoscaling `spec.replicas` is the count.
    """
    auto = spec.autoscaling
    if spec.stopped:
        return 0
    if not auto.enabled:
        return spec.replicas
    if before_stop is not None:
        return min(max(before_stop, auto.min_replicas), auto.max_replicas)
    if replicas_owned_elsewhere:
        return None
    return current_replicas if current_replicas is not None else initial_replicas(spec)


def render_children(
    spec: RecorderSpec,
    *,
    service_monitor_available: bool = True,
    current_replicas: int | None = None,
    partitions: int | None = None,
    replicas_owned_elsewhere: bool = False,
    before_stop: int | None = None,
    restart: str | None = None,
) -> list[Manifest]:
    """Every child the resource should have, in apply order (config before its consumers).

    `current_replicas` is the Deployment's replica count (when it exists); with an autoscaler
    the rendering keeps it (a fresh Deployment starts at minReplicas). Once an autoscaler has
    written replicas (`replicas_owned_elsewhere`, see `applies_replicas`) the field is left out
    of the applied Deployment: a forced apply of a value read a moment earlier would take the
    field back and could undo a scale that happened in between. `partitions`, when the
    operator has read it from Kafka, caps the HPA's maxReplicas.

    `spec.state` stopped renders 0 replicas, no HPA, and remembers on the Deployment the count
    to return to (`before_stop`, the one already remembered, else `current_replicas`); see
    `deployment_replicas`. `restart` goes on the pod template (`restart_value`).
    """
    replicas = deployment_replicas(
        spec,
        current_replicas=current_replicas,
        replicas_owned_elsewhere=replicas_owned_elsewhere,
        before_stop=before_stop,
    )
    deployment = render_deployment(spec, replicas, restart)
    if spec.stopped:
        if before_stop is None:
            running = dataclasses.replace(spec, state="running")
            before_stop = current_replicas or deployment_replicas(running) or 0
        deployment["metadata"]["annotations"] = {REPLICAS_BEFORE_STOP_ANNOTATION: str(before_stop)}
    children = [render_configmap(spec)]
    if spec.service_account_annotations is not None:
        children.append(render_service_account(spec))  # before the pods that use it
    children += [deployment, render_service(spec)]
    if spec.hpa_scaled:
        children.append(render_hpa(spec, partitions))
    if spec.pdb.enabled:
        children.append(render_pdb(spec))
    if spec.monitoring.service_monitor and service_monitor_available:
        children.append(render_service_monitor(spec))
    if spec.network_policy.enabled:
        children.append(render_network_policy(spec))
    return children


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


Path = tuple[str | int, ...]

# Where the children carry a resource.Quantity: the server stores those canonicalized ("0.5"
# as "500m", "1024Mi" as "1Gi", "10000" as "10k"), so drift compares them by value there, and
# only there (an environment value "1k" is not "1000"). "*" matches any key or list index.
QUANTITY_PATHS: dict[str, tuple[Path, ...]] = {
    "Deployment": (
        ("spec", "template", "spec", "containers", "*", "resources", "*", "*"),
        ("spec", "template", "spec", "volumes", "*", "emptyDir", "sizeLimit"),
    ),
    "HorizontalPodAutoscaler": (
        ("spec", "metrics", "*", "*", "target", "averageValue"),
        ("spec", "metrics", "*", "*", "target", "value"),
    ),
}


def _matches(path: Path, pattern: Path) -> bool:
    return len(path) == len(pattern) and all(
        want == "*" or want == got for got, want in zip(path, pattern, strict=True)
    )


def is_subset(
    desired: Any, actual: Any, quantities: tuple[Path, ...] = (), path: Path = ()
) -> bool:
    """Whether `actual` already carries everything in `desired` (extra server fields allowed).

    Lists must match item by item (same length): a merge patch replaces lists wholesale, so
    an extra container or env entry added by hand is drift too. Values at a path matching one
    of `quantities` compare as Kubernetes quantities.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(
            k in actual and is_subset(v, actual[k], quantities, (*path, k))
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(
            is_subset(d, a, quantities, (*path, i))
            for i, (d, a) in enumerate(zip(desired, actual, strict=True))
        )
    if isinstance(desired, bool) or isinstance(actual, bool):
        return desired is actual
    if any(_matches(path, pattern) for pattern in quantities):
        return quantity.same(desired, actual)
    if isinstance(desired, int | float) and isinstance(actual, int | float):
        return desired == actual
    return bool(desired == actual)


# On every child: a digest of what the operator last applied to it. Server-side apply removes a
# field the operator applied before and no longer sends; the digest is how a pass notices that
# the rendering changed even when everything it still renders is already in place.
APPLIED_ANNOTATION = "datarecorder.dev/applied-digest"


def applied_digest(manifest: Manifest) -> str:
    """A digest of a rendered child, without `spec.replicas` (an autoscaler's to move)."""
    body = copy.deepcopy(manifest)
    (body.get("spec") or {}).pop("replicas", None)
    annotations = body["metadata"].pop("annotations", None) or {}
    annotations.pop(APPLIED_ANNOTATION, None)
    if annotations:
        body["metadata"]["annotations"] = annotations
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stamped(manifest: Manifest) -> Manifest:
    """The child as the operator applies it: the rendering plus its digest annotation."""
    out = copy.deepcopy(manifest)
    meta = out["metadata"]
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        APPLIED_ANNOTATION: applied_digest(manifest),
    }
    return out


def needs_apply(desired: Manifest, actual: Mapping[str, Any] | None) -> bool:
    """Whether the stamped child `desired` must be applied over `actual` (None: absent).

    Pure. Applied when the object is missing, when a field the operator sets differs (an edit
    by hand, a spec change), or when the digest differs (the rendering dropped a field: the
    apply removes it). Fields only the server or other actors set are left alone; quantities
    compare by value (the server rewrites them canonically).
    """
    if actual is None:
        return True
    if stale_config_keys(desired, actual):
        return True
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return not is_subset(body, actual, QUANTITY_PATHS.get(desired.get("kind", ""), ()))


def stale_config_keys(desired: Manifest, actual: Mapping[str, Any]) -> list[str]:
    """Keys of the recorder's ConfigMap that the rendering does not have.

    The whole map is the operator's: every key becomes the recorder's environment, so a key
    added by hand (which server-side apply would keep, as another manager's) is removed too.
    """
    if desired.get("kind") != "ConfigMap":
        return []
    return sorted(set(actual.get("data") or {}) - set(desired.get("data") or {}))


def referenced_secrets(deployment: Manifest) -> tuple[str, ...]:
    """Every Secret the recorder pods of `deployment` can read (env, envFrom, volumes,
    projected volumes), sorted; image pull secrets are the kubelet's, not the pods'."""
    pod = deployment["spec"]["template"]["spec"]
    names: set[str] = set()
    for container in pod.get("containers") or []:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            names.add(ref.get("name", ""))
        for source in container.get("envFrom") or []:
            names.add((source.get("secretRef") or {}).get("name", ""))
    for volume in pod.get("volumes") or []:
        names.add((volume.get("secret") or {}).get("secretName", ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            names.add((source.get("secret") or {}).get("name", ""))
    return tuple(sorted(names - {""}))
