"""Guardrails on the real control plane (issue 21): under the chart's default policy the API
server refuses a privileged DataRecorder (the chart's ValidatingAdmissionPolicy), the operator
refuses it where the API server let it through, permissive accepts it and renders it as asked,
and the operator's lag reads take only Secrets marked for the DataRecorder.

The admission policy is cluster-scoped: each test binds it to its own namespace only, so the
tests running beside it are not judged by it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from datarecorder_operator import kube
from datarecorder_operator.autoscaling import CredentialsUnavailable, _kafka_access
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import SECRET_MARK_ANNOTATION

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import MINIMAL_SPEC, create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import ROOT, Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")

# The issue's "root shell on the node", one request per reason (the API server reports the
# first failed validation only) and all of them together.
VIOLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "privileged": (
        {"containerSecurityContext": {"privileged": True}},
        "spec.containerSecurityContext.privileged: privileged containers are not allowed",
    ),
    "uid 0": (
        {"containerSecurityContext": {"runAsUser": 0}},
        "spec.containerSecurityContext.runAsUser: uid 0 (root) is not allowed",
    ),
    "runAsNonRoot false": (
        {"podSecurityContext": {"runAsNonRoot": False}},
        "spec.podSecurityContext.runAsNonRoot: false is not allowed",
    ),
    "privilege escalation": (
        {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
        "spec.containerSecurityContext.allowPrivilegeEscalation: true is not allowed",
    ),
    "added capability": (
        {"containerSecurityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
        "spec.containerSecurityContext.capabilities.add: adding capabilities is not allowed",
    ),
    "hostPath": (
        {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]},
        "spec.volumes: a volume type other than configMap",
    ),
    "inline csi": (
        {"volumes": [{"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io"}}]},
        "spec.volumes: a volume type other than configMap",
    ),
    "image from elsewhere": (
        {"image": "docker.io/evil/shell:latest"},
        "spec.image: not from an allowed registry (ghcr.io/example)",
    ),
    "a ServiceAccount not listed": (
        {"serviceAccountName": "datarecorder-operator"},
        "spec.serviceAccountName: not an allowed ServiceAccount",
    ),
}
ROOT_SHELL: dict[str, Any] = {
    "image": "docker.io/evil/shell:latest",
    "serviceAccountName": "datarecorder-operator",
    "containerSecurityContext": {
        "privileged": True,
        "runAsUser": 0,
        "allowPrivilegeEscalation": True,
    },
    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    "volumeMounts": [{"name": "host", "mountPath": "/host"}],
}


def _admission_docs(*set_args: str) -> list[dict[str, Any]]:
    """The chart's admission objects as `helm template` renders them with `set_args`."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "helm"), "template", "r", str(ROOT / "helm" / "datarecorder"),
         *set_args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] in ADMISSION_KINDS]


def _create(k8s: K8s, ns: str, manifest: dict[str, Any], *, dry_run: bool = False) -> str | None:
    """None when the server accepts `manifest`, else its answer."""
    args = ["create", "-n", ns, "-f", "-", *(["--dry-run=server"] if dry_run else [])]
    proc = k8s.kubectl(*args, input=json.dumps(manifest), check=False)
    return None if proc.returncode == 0 else proc.stderr


@pytest.fixture
def guarded(k8s: K8s, k8s_namespace: str) -> Iterator[str]:
    """A namespace under the chart's restricted admission policy (allowedImages set)."""
    docs = _admission_docs("--set", "policy.allowedImages={ghcr.io/example/}")
    assert sorted(d["kind"] for d in docs) == sorted(ADMISSION_KINDS)
    name = f"dr-restricted-{k8s_namespace}"
    for doc in docs:
        doc["metadata"]["name"] = name
        if doc["kind"] == "ValidatingAdmissionPolicyBinding":
            doc["spec"]["policyName"] = name
            doc["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k8s_namespace}}
            }
        k8s.apply(doc)
    # The admission plugin learns of a new policy from a watch: wait until it answers.
    wait_for(
        lambda: _create(k8s, k8s_namespace, data_recorder("probe", **ROOT_SHELL), dry_run=True),
        timeout=60,
        what="the admission policy in force",
    )
    try:
        yield k8s_namespace
    finally:
        for kind in reversed(ADMISSION_KINDS):
            k8s.kubectl("delete", kind.lower(), name, "--wait=false", check=False)


def test_the_api_server_refuses_the_root_shell_under_the_default_policy(
    k8s: K8s, guarded: str
) -> None:
    for case, (overrides, message) in VIOLATIONS.items():
        answer = _create(k8s, guarded, data_recorder("shell", **overrides), dry_run=True)
        assert answer is not None, f"{case}: accepted"
        assert message in answer, f"{case}: {message!r} not in:\n{answer}"
    answer = _create(k8s, guarded, data_recorder("shell", **ROOT_SHELL))
    assert answer is not None and "denied request" in answer and "policy restricted" in answer
    gone = k8s.kubectl("get", "-n", guarded, "datarecorder", "shell", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    # What stays allowed: an image of the allowed registry, security contexts that only add
    # safety, allow-listed volume types, the ServiceAccount the operator makes.
    fine = data_recorder(
        "fine",
        podSecurityContext={"runAsUser": 2000},
        containerSecurityContext={"capabilities": {"drop": ["NET_RAW"]}},
        volumes=[{"name": "scratch", "emptyDir": {}}],
        serviceAccount={},
        automountServiceAccountToken=True,
    )
    assert _create(k8s, guarded, fine) is None


def test_permissive_renders_no_admission_policy() -> None:
    assert _admission_docs("--set", "policy.mode=permissive") == []


def _deployment(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    proc = k8s.kubectl("get", "deploy", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _ready_condition(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    status = k8s.get_json("datarecorder", name, namespace=ns).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


def test_the_operator_refuses_what_the_api_server_let_through(
    k8s: K8s, k8s_namespace: str, tmp_path: Path
) -> None:
    """No admission policy here (the CRD installed alone): the restricted operator (its
    default) still refuses the root shell and creates nothing."""
    assert _create(k8s, k8s_namespace, data_recorder("shell", **ROOT_SHELL)) is None
    op = Operator(k8s, k8s_namespace, tmp_path / "operator.log")
    try:
        op.wait_alive()
        ready = wait_for(
            lambda: (
                (c := _ready_condition(k8s, k8s_namespace, "shell"))
                and c["reason"] == "InvalidSpec"
                and c
            ),
            timeout=60,
            what="Ready=False InvalidSpec on the root shell",
        )
        assert ready["status"] == "False"
        assert ready["message"].startswith("refused by policy restricted: ")
        assert "spec.containerSecurityContext.privileged" in ready["message"]
        assert "volume type hostPath is not allowed" in ready["message"]
        assert _deployment(k8s, k8s_namespace, "shell-recorder") is None
    finally:
        op.stop()
        op.assert_no_traceback_while_running()


def test_permissive_accepts_the_root_shell_and_renders_it_as_asked(
    k8s: K8s, k8s_namespace: str, tmp_path: Path
) -> None:
    assert _create(k8s, k8s_namespace, data_recorder("shell", **ROOT_SHELL)) is None
    op = Operator(
        k8s, k8s_namespace, tmp_path / "operator.log", extra_args=("--policy", "permissive")
    )
    try:
        op.wait_alive()
        deployment = wait_for(
            lambda: _deployment(k8s, k8s_namespace, "shell-recorder"),
            timeout=60,
            what="Deployment shell-recorder",
        )
    finally:
        op.stop()
        op.assert_no_traceback_while_running()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "docker.io/evil/shell:latest"
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["runAsUser"] == 0
    assert any(v.get("hostPath", {}).get("path") == "/" for v in pod["volumes"])
    assert pod["serviceAccountName"] == "datarecorder-operator"


async def test_lag_reads_take_only_secrets_marked_for_the_recorder(
    k8s: K8s, k8s_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = k8s_namespace
    for secret, mark in (("unmarked", None), ("for-other", "other"), ("keyless", "rec")):
        k8s.kubectl("create", "secret", "generic", secret, "-n", ns, "--from-literal=other=x")
        if mark is not None:
            k8s.kubectl("annotate", "secret", secret, "-n", ns, f"{SECRET_MARK_ANNOTATION}={mark}")
    k8s.kubectl("create", "secret", "generic", "unmarked-pw", "-n", ns, "--from-literal=password=p")
    k8s.kubectl("create", "secret", "generic", "ours", "-n", ns, "--from-literal=password=p")
    k8s.kubectl("annotate", "secret", "ours", "-n", ns, f"{SECRET_MARK_ANNOTATION}=a, rec")
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    client = kube.KubeClient(info)

    async def access(secret: str) -> str:
        kafka = {
            "brokers": ["kafka.example:9093"],
            "securityProtocol": "SASL_SSL",
            "sasl": {"secretName": secret, "username": "rec"},
        }
        spec = parse_spec("rec", ns, {**MINIMAL_SPEC, "kafka": kafka})
        try:
            got = await _kafka_access(client, spec)
        except CredentialsUnavailable as exc:
            return str(exc)
        return f"password {got.sasl_password}"

    try:
        answers = {
            s: await access(s)
            for s in ("missing", "unmarked", "unmarked-pw", "for-other", "keyless")
        }
        ours = await access("ours")
    finally:
        await client.close()
    # One answer for every cause: the status tells nobody which Secret or key exists.
    assert len(set(answers.values())) == 1, answers
    assert SECRET_MARK_ANNOTATION in answers["missing"] and "'rec'" in answers["missing"]
    assert ours == "password p"


def test_a_tenant_gets_no_secret_it_was_not_given(
    k8s: K8s, k8s_namespace: str, tmp_path: Path
) -> None:
    """A tenant with rights on datarecorders only names a Secret of its namespace that was
    not given to it (the platform's database password), as the database password and through
    an env entry: the restricted operator renders no pod that reads it, and the status tells
    it no more than it would for a Secret that does not exist."""
    ns = k8s_namespace
    tenant = f"system:serviceaccount:{ns}:tenant"
    k8s.kubectl("create", "serviceaccount", "tenant", "-n", ns)
    k8s.kubectl(
        "create", "role", "tenant", "-n", ns, "--resource=datarecorders.datarecorder.dev",
        "--verb=get,list,watch,create,update,patch,delete",
    )  # fmt: skip
    k8s.kubectl("create", "rolebinding", "tenant", "-n", ns, "--role=tenant", f"--user={tenant}")
    k8s.kubectl(
        "create", "secret", "generic", "platform-db", "-n", ns, "--from-literal=password=root-pw"
    )  # fmt: skip
    denied = k8s.kubectl("get", "secret", "platform-db", "-n", ns, f"--as={tenant}", check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    db = {"host": "attacker.example", "passwordSecret": {"name": "platform-db"}}
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "platform-db", "key": "password"}}}]
    for name, spec in (
        ("by-db", {"timescaledb": db}),
        ("by-env", {"timescaledb": {**db, "passwordSecret": {"name": "nowhere"}}, "env": env}),
    ):
        manifest = json.dumps(data_recorder(name, **spec))
        k8s.kubectl("create", "-n", ns, "-f", "-", f"--as={tenant}", input=manifest)
    op = Operator(k8s, ns, tmp_path / "operator.log")
    try:
        op.wait_alive()
        for name in ("by-db", "by-env"):
            ready = wait_for(
                lambda name=name: (
                    (c := _ready_condition(k8s, ns, name))  # type: ignore[misc]
                    and c["reason"] == "SecretNotMarked"
                    and c
                ),
                timeout=60,
                what=f"Ready=False SecretNotMarked on {name}",
            )
            assert "platform-db" in ready["message"] and "missing or not marked" in ready["message"]
            assert _deployment(k8s, ns, f"{name}-recorder") is None
        # A Secret that does not exist reads the same as one that exists unmarked.
        by_env = _ready_condition(k8s, ns, "by-env")
        assert by_env is not None
        assert by_env["message"].startswith(
            "Secrets nowhere, platform-db are missing or not marked"
        )
        # The Secret's owner gives it to one DataRecorder: that one is rendered, the other not.
        k8s.kubectl(
            "annotate", "secret", "platform-db", "-n", ns, f"{SECRET_MARK_ANNOTATION}=by-db"
        )
        wait_for(
            lambda: _deployment(k8s, ns, "by-db-recorder"),
            timeout=60,
            what="Deployment by-db-recorder once the Secret is given to it",
        )
        assert _deployment(k8s, ns, "by-env-recorder") is None
    finally:
        op.stop()
        op.assert_no_traceback_while_running()


def _network_policy(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    proc = k8s.kubectl("get", "networkpolicy", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_the_operator_renders_a_network_policy_per_recorder(
    k8s: K8s, k8s_namespace: str, tmp_path: Path
) -> None:
    ns = k8s_namespace
    create_tsdb_secret(k8s, ns)
    kafka = {"to": [{"ipBlock": {"cidr": "10.1.0.0/24"}}], "ports": [{"port": 9092}]}
    k8s.apply(data_recorder("fenced", networkPolicy={"enabled": True, "egress": [kafka]}), ns)
    op = Operator(k8s, ns, tmp_path / "operator.log")
    try:
        op.wait_alive()
        policy = wait_for(
            lambda: _network_policy(k8s, ns, "fenced-recorder"),
            timeout=60,
            what="NetworkPolicy fenced-recorder",
        )
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert policy["spec"]["egress"][0]["ports"][0]["port"] == 53
        assert policy["spec"]["egress"][1]["to"] == kafka["to"]
        assert [r["kind"] for r in policy["metadata"]["ownerReferences"]] == ["DataRecorder"]
        k8s.kubectl(
            "patch", "datarecorder", "fenced", "-n", ns, "--type=merge",
            "-p", '{"spec": {"networkPolicy": {"enabled": false}}}',
        )  # fmt: skip
        wait_for(
            lambda: _network_policy(k8s, ns, "fenced-recorder") is None,
            timeout=60,
            what="the NetworkPolicy deleted with spec.networkPolicy.enabled false",
        )
    finally:
        op.stop()
        op.assert_no_traceback_while_running()
