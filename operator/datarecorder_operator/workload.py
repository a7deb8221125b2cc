"""The recorder Deployment: its pod template, probes, security contexts and rollout; pure.

Owns the recorder container as the pods run it and the Secrets those pods can read; what its
environment holds is `environment`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datarecorder_operator.environment import (
    DB_CA_MOUNT,
    HTTP_PORT,
    TLS_MOUNT,
    config_hash,
    rack_env,
    secret_env,
    tls_mounts,
)
from datarecorder_operator.naming import (
    Manifest,
    child_name,
    common_labels,
    metadata,
    selector_labels,
)
from datarecorder_operator.policy import (
    SAFE_CONTAINER_SECURITY,
    SAFE_POD_SECURITY,
    merge_security_context,
)
from datarecorder_operator.spec import RESTART_ANNOTATION, RecorderSpec

CONFIG_HASH_ANNOTATION = "datarecorder.dev/config-hash"
RUN_AS = 10001
# startupProbe: 5 s x 60 = 5 minutes for a cold start before liveness takes over.
STARTUP_FAILURE_THRESHOLD = 60
SHUTDOWN_MARGIN_SECONDS = 15


def service_account_name(spec: RecorderSpec) -> str:
    """The pods' ServiceAccount: the user's, the one the operator makes, or the namespace's."""
    if spec.service_account_name:
        return spec.service_account_name
    return (
        child_name(spec.name, "ServiceAccount")
        if spec.service_account_annotations is not None
        else "default"
    )


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
            {"configMapRef": {"name": child_name(spec.name, "ConfigMap")}},
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
        "metadata": metadata(spec, "Deployment"),
        "spec": deployment_spec,
    }


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
