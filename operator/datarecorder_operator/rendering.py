"""Pure rendering of a DataRecorder's children: spec in, Kubernetes manifests out.

Owns the set of children a spec asks for, in apply order, and each small child (ConfigMap,
ServiceAccount, Service, HPA, PDB, NetworkPolicy, ServiceMonitor); the Deployment is
`workload`'s, names and labels `naming`'s, the environment `environment`'s. No I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from datarecorder_operator import sinks
from datarecorder_operator.environment import HTTP_PORT, config_data
from datarecorder_operator.naming import Manifest, child_name, metadata, selector_labels
from datarecorder_operator.replicas import (
    REPLICAS_BEFORE_STOP_ANNOTATION,
    deployment_replicas,
    hpa_max_replicas,
)
from datarecorder_operator.spec import API_VERSION, KIND, RecorderSpec
from datarecorder_operator.workload import render_deployment

METRIC_NAME = "datarecorder_lag_records"


def render_service_account(spec: RecorderSpec) -> Manifest:
    """The recorders' own ServiceAccount, for workload identity (IRSA, GKE, Azure) on S3."""
    meta = metadata(spec, "ServiceAccount")
    meta["annotations"] = dict(spec.service_account_annotations or {})
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": spec.pod.automount_service_account_token,
    }


def render_configmap(spec: RecorderSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, "ConfigMap"),
        "data": config_data(spec),
    }


def render_service(spec: RecorderSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, "Service"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            # The Service exists for scraping /metrics: a recorder that is unready because a
            # store is down is exactly the one whose metrics matter.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_hpa(spec: RecorderSpec, partitions: int | None = None) -> Manifest:
    """An autoscaling/v2 HPA on the per-pod lag gauge (needs a Pods-metrics adapter), of the
    sink Kafka's committed offset follows (`sinks.scaling_sink`)."""
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
        "metadata": metadata(spec, "HorizontalPodAutoscaler"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": child_name(spec.name, "Deployment"),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": hpa_max_replicas(spec, partitions),
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {
                            "name": METRIC_NAME,
                            "selector": {"matchLabels": {"sink": sinks.scaling_sink(spec)}},
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
        "metadata": metadata(spec, "PodDisruptionBudget"),
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
        "metadata": metadata(spec, "NetworkPolicy"),
        "spec": body,
    }


def render_service_monitor(spec: RecorderSpec) -> Manifest:
    meta = metadata(spec, "ServiceMonitor")
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
