"""What `helm template` renders by default for a shared cluster (issue 21): the restricted
policy (admission policy + operator flag), namespaced RBAC, a `helm test` pod with its own
ServiceAccount and no rights, NetworkPolicies on (ingress and egress).

Owns these checks of the rendered chart (scripts/helm, the pinned Helm; no cluster).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import yaml
from datarecorder_operator.policy import ALLOWED_VOLUME_TYPES

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
    # helm test: its own ServiceAccount, bound to nothing; it checks the recorders answer.
    (pod,) = kinds(docs, "Pod")
    test_sa = pod["spec"]["serviceAccountName"]
    assert test_sa != "r-datarecorder-operator"
    assert not [
        b
        for b in kinds(docs, "RoleBinding") + kinds(docs, "ClusterRoleBinding")
        if any(s["name"] == test_sa for s in b["subjects"])
    ]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["DR_LIVE_URL"] == f"http://r-datarecorder-recorder.{NAMESPACE}.svc:8080/live"
    assert set(policies_of(docs)) == {
        (NAMESPACE, "r-datarecorder-operator"),
        (NAMESPACE, "r-datarecorder-recorders"),
    }


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


def policies_of(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (n["metadata"]["namespace"], n["metadata"]["name"]): n["spec"]
        for n in kinds(docs, "NetworkPolicy")
    }


def tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"port": p, "protocol": "TCP"} for p in ports]


KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_RULE = {
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    "to": [KUBE_DNS],
}


def test_egress_is_limited_by_default_to_dns_and_the_stores_ports() -> None:
    policies = policies_of(render())
    operator = policies[(NAMESPACE, "r-datarecorder-operator")]
    recorders = policies[(NAMESPACE, "r-datarecorder-recorders")]
    for spec in (operator, recorders):
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["egress"][0] == DNS_RULE
        # Every other rule names its ports: none allows every port (a rule without ports
        # and peers would allow everything).
        assert all(rule.get("ports") for rule in spec["egress"])
    # The operator: the API server and the brokers (lag reads); not the stores.
    assert operator["egress"][1:] == [{"ports": tcp(443, 6443)}, {"ports": tcp(9092, 9093)}]
    # The recorders: the brokers, the database, the object store; not the API server.
    assert recorders["egress"][1:] == [
        {"ports": tcp(9092, 9093)}, {"ports": tcp(5432)}, {"ports": tcp(443)},
    ]  # fmt: skip


def test_egress_destinations_take_cidrs_peers_and_ports() -> None:
    kafka_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}
    docs = render(
        "--set-json", 'networkPolicy.egress.kafka={"ports":[9093],"cidrs":["10.1.0.0/24"]}',
        "--set-json", f'networkPolicy.egress.kafka.to=[{json.dumps(kafka_ns)}]',
        "--set-json", 'networkPolicy.egress.apiServer.cidrs=["10.96.0.1/32"]',
        "--set-json", 'networkPolicy.egress.database.ports=[{"port":5433}]',
        "--set-json", "networkPolicy.egress.objectStore.ports=[]",
    )  # fmt: skip
    policies = policies_of(docs)
    kafka = {"ports": tcp(9093), "to": [{"ipBlock": {"cidr": "10.1.0.0/24"}}, kafka_ns]}
    api = {"ports": tcp(443, 6443), "to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}]}
    assert policies[(NAMESPACE, "r-datarecorder-operator")]["egress"] == [DNS_RULE, api, kafka]
    # The object store with no ports and no peers allows nothing (not everything).
    assert policies[(NAMESPACE, "r-datarecorder-recorders")]["egress"] == [
        DNS_RULE, kafka, {"ports": tcp(5433)},
    ]  # fmt: skip
    # Turned off, ingress only.
    docs = render("--set", "networkPolicy.egress.enabled=false")
    assert all(spec["policyTypes"] == ["Ingress"] for spec in policies_of(docs).values())


def test_the_recorders_policy_goes_to_every_watched_namespace() -> None:
    docs = render("--set", "operator.watchNamespaces={md-a,md-b}")
    assert set(policies_of(docs)) == {
        (NAMESPACE, "r-datarecorder-operator"),
        ("md-a", "r-datarecorder-recorders"),
        ("md-b", "r-datarecorder-recorders"),
    }


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


def test_the_admission_policy_allows_the_operators_volume_types() -> None:
    (policy,) = kinds(render(), "ValidatingAdmissionPolicy")
    (volumes,) = [
        v["expression"]
        for v in policy["spec"]["validations"]
        if "object.spec.volumes" in v["expression"]
    ]
    listed = set(re.findall(r"'([A-Za-z]+)'", volumes)) - {"name"}
    assert listed == ALLOWED_VOLUME_TYPES


def test_the_helm_test_pod_may_reach_the_recorders_when_ingress_is_fenced() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    docs = render("--set-json", f"networkPolicy.metricsFrom=[{json.dumps(monitoring)}]")
    (ingress,) = policies_of(docs)[(NAMESPACE, "r-datarecorder-recorders")]["ingress"]
    test_pod = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/instance": "r",
                "app.kubernetes.io/component": "test",
            }
        },
    }
    assert ingress["from"] == [monitoring, test_pod]
