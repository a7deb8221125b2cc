"""Least-privilege RBAC of the operator, as data the Helm chart renders and a test checks.

Owns `CLUSTER_ROLE_RULES` and `LEASE_RULES`; every rule names the handler that needs it.

* DataRecorders: watch them (kopf lists and watches cluster-wide), patch them (kopf's
  finalizer and progress annotations), patch their status (conditions, lag).
* Children (ConfigMaps, Services, ServiceAccounts, Deployments, HPAs, PDBs, ServiceMonitors,
  NetworkPolicies):
  get, create,
  patch (restore drift, scale in mode operator), delete (unwanted children, cleanup).
  Deployments also list/watch: the operator watches the recorders' Deployments (a GET per
  tick otherwise); the other children are only read by name, once per resync.
* Jobs: get, create, delete (the reset-to-time Job); Pods: list (are the recorders gone?).
* Secrets: get only, to read Kafka SASL/TLS credentials for the lag poll (the recorder pods
  receive secrets by reference; the operator never copies them).
* Events: create/patch, so `kubectl describe dr` shows scaling and failures.
* kopf's own observers (kopf/_core/reactor/observation.py), cluster-scoped, list/watch only:
  CustomResourceDefinitions, so a resource kind installed or removed while it runs is noticed;
  Namespaces, when run with `--namespace` (the namespace observer lists and watches them;
  cluster-wide it does not). Without them kopf retries the refused requests for about a minute
  before it falls back to assumptions. Peering needs nothing (the operator runs standalone),
  and API discovery (is ServiceMonitor served?) is allowed to every authenticated user by the
  default `system:discovery` role.
* Leader election (`LEASE_RULES`, a Role in the operator's own namespace, not in the ClusterRole):
  get/create/update of coordination.k8s.io Leases (`leader.LeaseElector`; update is a PUT
  guarded by the resourceVersion, so two candidates cannot both win).
"""

from __future__ import annotations

from typing import Any

CLUSTER_ROLE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["datarecorder.dev"],
        "resources": ["datarecorders"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {
        "apiGroups": ["datarecorder.dev"],
        "resources": ["datarecorders/status"],
        "verbs": ["get", "patch"],
    },
    {
        "apiGroups": [""],
        "resources": ["configmaps", "services", "serviceaccounts"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["monitoring.coreos.com"],
        "resources": ["servicemonitors"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    # The reset-to-time annotation: a Job runs `reset-progress` once the recorder pods (listed
    # by label, terminating ones included) are gone.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]


LEASE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
]


def cluster_role_rules() -> list[dict[str, Any]]:
    """A copy of the rules (callers may mutate it)."""
    return [{k: list(v) for k, v in rule.items()} for rule in CLUSTER_ROLE_RULES]


def cluster_role(name: str = "datarecorder-operator") -> dict[str, Any]:
    """The ClusterRole manifest itself, e.g. for `kubectl apply` without the chart."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "datarecorder-operator"}},
        "rules": cluster_role_rules(),
    }
