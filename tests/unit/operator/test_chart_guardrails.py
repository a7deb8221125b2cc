"""What `helm template` renders by default for a shared cluster (issue 21): the restricted
policy (admission policy + operator flag), namespaced RBAC, a `helm test` pod with its own
ServiceAccount and no rights beyond reading the release's DataRecorder, NetworkPolicies on.

Owns these checks of the rendered chart (scripts/helm, the pinned Helm; no cluster).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml

from tests.unit.operator.helpers import REPO

NAMESPACE = "market-data"
RECORDER = ["--set", "recorder.enabled=true", "--set-json"]
RECORDER_SPEC = (
    'recorder.spec={"kafka":{"brokers":["k:9092"]},'
    '"timescaledb":{"host":"db","passwordSecret":{"name":"tsdb"}}}'
)


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm"), "template", "r", str(REPO / "helm" / "datarecorder"),
         "--namespace", NAMESPACE, *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    (deployment,) = kinds(docs, "Deployment")
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_defaults_are_restricted_namespaced_and_fenced() -> None:
    docs = render(*RECORDER, RECORDER_SPEC)
    args = operator_args(docs)
    assert "--policy=restricted" in args and f"--namespace={NAMESPACE}" in args
    assert len(kinds(docs, "ValidatingAdmissionPolicy")) == 1
    assert len(kinds(docs, "ValidatingAdmissionPolicyBinding")) == 1
    # No ClusterRole grants anything namespaced: Secrets and children only through a Role in
    # the watched namespace.
    for role in kinds(docs, "ClusterRole"):
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert resources <= {"namespaces", "customresourcedefinitions"}, role["metadata"]["name"]
    roles = {r["metadata"]["name"]: r for r in kinds(docs, "Role")}
    operator_role = roles["r-datarecorder-operator"]
    assert operator_role["metadata"]["namespace"] == NAMESPACE
    assert any("secrets" in rule["resources"] for rule in operator_role["rules"])
    # helm test: its own ServiceAccount; its one right is reading the release's DataRecorder.
    (pod,) = kinds(docs, "Pod")
    test_sa = pod["spec"]["serviceAccountName"]
    assert test_sa != "r-datarecorder-operator"
    bound = [
        b["roleRef"]["name"]
        for b in kinds(docs, "RoleBinding") + kinds(docs, "ClusterRoleBinding")
        if any(s["name"] == test_sa for s in b["subjects"])
    ]
    assert len(bound) == 1
    assert roles[bound[0]]["rules"] == [
        {
            "apiGroups": ["datarecorder.dev"],
            "resources": ["datarecorders"],
            "resourceNames": ["r-datarecorder"],
            "verbs": ["get"],
        }
    ]
    policies = {n["metadata"]["name"] for n in kinds(docs, "NetworkPolicy")}
    assert policies == {"r-datarecorder-operator", "r-datarecorder-recorders"}


def test_cluster_wide_and_permissive_only_when_asked() -> None:
    docs = render(
        "--set", "operator.clusterWide=true", "--set", "policy.mode=permissive",
        "--set", "policy.allowedImages={ghcr.io/acme/}",
    )  # fmt: skip
    args = operator_args(docs)
    assert "--policy=permissive" in args and "--allowed-image=ghcr.io/acme/" in args
    assert not any(a.startswith("--namespace") for a in args)
    assert not kinds(docs, "ValidatingAdmissionPolicy")
    (cluster_role,) = [
        r for r in kinds(docs, "ClusterRole") if r["metadata"]["name"] == "r-datarecorder-operator"
    ]
    assert any("secrets" in rule["resources"] for rule in cluster_role["rules"])


def test_egress_is_dns_and_the_listed_destinations_only() -> None:
    kafka = {"to": [{"ipBlock": {"cidr": "10.1.0.0/24"}}], "ports": [{"port": 9092}]}
    api = {"to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}], "ports": [{"port": 443}]}
    db = {"to": [{"ipBlock": {"cidr": "10.2.0.0/24"}}], "ports": [{"port": 5432}]}
    docs = render(
        "--set", "networkPolicy.egress.enabled=true",
        "--set-json", f"networkPolicy.egress.kafka=[{json.dumps(kafka)}]",
        "--set-json", f"networkPolicy.egress.apiServer=[{json.dumps(api)}]",
        "--set-json", f"networkPolicy.egress.database=[{json.dumps(db)}]",
    )  # fmt: skip
    policies = {n["metadata"]["name"]: n["spec"] for n in kinds(docs, "NetworkPolicy")}
    operator, recorders = policies["r-datarecorder-operator"], policies["r-datarecorder-recorders"]
    for spec in (operator, recorders):
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        dns = spec["egress"][0]
        assert {p["port"] for p in dns["ports"]} == {53}
        assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert operator["egress"][1:] == [api, kafka]
    assert recorders["egress"][1:] == [kafka, db]  # no API server for the recorders
    # Off by default: without destinations, egress rules would cut the recorders off.
    default = {n["metadata"]["name"]: n["spec"] for n in kinds(render(), "NetworkPolicy")}
    assert all(spec["policyTypes"] == ["Ingress"] for spec in default.values())


def test_a_role_in_each_watched_namespace_and_nowhere_else() -> None:
    docs = render("--set", "operator.watchNamespaces={md-a,md-b}")
    assert [a for a in operator_args(docs) if a.startswith("--namespace")] == [
        "--namespace=md-a",
        "--namespace=md-b",
    ]
    roles = {
        r["metadata"]["namespace"]
        for r in kinds(docs, "Role")
        if r["metadata"]["name"] == "r-datarecorder-operator"
    }
    assert roles == {"md-a", "md-b"}  # not the release namespace, not kube-system
    bindings = [
        b for b in kinds(docs, "RoleBinding") if b["metadata"]["name"] == "r-datarecorder-operator"
    ]
    assert {b["metadata"]["namespace"] for b in bindings} == roles
