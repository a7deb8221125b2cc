"""The operator under its own least-privilege RBAC (datarecorder_operator.rbac) on scripts/k8s.

Owns the check that CLUSTER_ROLE_RULES are enough for a full lifecycle when the API server
enforces them (RBAC authorizer, a ServiceAccount token from the TokenRequest API).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

SA = "datarecorder-operator"


def _service_account_kubeconfig(k8s: K8s, namespace: str, path: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount with a token minted by the API server."""
    token = k8s.kubectl("create", "token", SA, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(k8s.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": SA, "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": SA}}],
                "current-context": "c",
            }
        )
    )
    return path


@pytest.fixture
def rbac_operator(k8s: K8s, tmp_path: Path) -> Iterator[tuple[str, Operator]]:
    from datarecorder_operator import rbac

    ns = f"rbac-{uuid.uuid4().hex[:8]}"
    role = f"datarecorder-operator-{ns}"
    k8s.kubectl("create", "namespace", ns)
    k8s.kubectl("create", "serviceaccount", SA, "-n", ns)
    create_tsdb_secret(k8s, ns)
    k8s.apply(rbac.cluster_role(role))
    k8s.kubectl(
        "create", "clusterrolebinding", role, f"--clusterrole={role}",
        f"--serviceaccount={ns}:{SA}",
    )  # fmt: skip
    kubeconfig = _service_account_kubeconfig(k8s, ns, tmp_path / "operator.kubeconfig")
    whoami = json.loads(
        k8s.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json").stdout
    )
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:{SA}"
    op = Operator(k8s, ns, tmp_path / "operator.log", kubeconfig=kubeconfig)
    try:
        op.wait_alive()
        yield ns, op
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        k8s.kubectl("delete", "clusterrolebinding,clusterrole", role, check=False)
        op.assert_no_traceback_while_running()


def test_rbac_denies_what_the_role_does_not_grant(k8s: K8s, rbac_operator: Any) -> None:
    ns, _ = rbac_operator
    who = f"--as=system:serviceaccount:{ns}:{SA}"
    can = k8s.kubectl("auth", "can-i", who, "-n", ns, "patch", "deployments", check=False)
    assert can.stdout.strip() == "yes"
    cannot = k8s.kubectl("auth", "can-i", who, "-n", ns, "list", "secrets", check=False)
    assert cannot.stdout.strip() == "no"
    denied = k8s.kubectl(who, "-n", ns, "get", "secrets", check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr


CHILDREN = {
    "deployment.apps/least-recorder",
    "service/least-recorder",
    "configmap/least-recorder-config",
    "poddisruptionbudget.policy/least-recorder",
    "horizontalpodautoscaler.autoscaling/least-recorder",
}


def _names(k8s: K8s, ns: str) -> set[str]:
    return set(k8s.kubectl("get", "-n", ns, "deploy,svc,cm,pdb,hpa", "-o", "name").stdout.split())


def _forbidden(op: Operator) -> list[str]:
    return [line for line in op.log().splitlines() if "forbidden" in line.lower()]


# What kopf itself lists and watches besides the DataRecorders: without these grants it retries
# for ~54 s, then falls back (no namespace or CRD observation) before handling anything.
KOPF_OBSERVED = ("customresourcedefinitions", "namespaces")


def test_operator_starts_without_forbidden_requests(k8s: K8s, rbac_operator: Any) -> None:
    _, op = rbac_operator
    time.sleep(3)  # kopf's observers start right after the liveness endpoint
    forbidden = _forbidden(op)
    assert not forbidden, "\n".join(forbidden[:10])


def test_operator_runs_a_full_lifecycle_with_its_own_rbac(k8s: K8s, rbac_operator: Any) -> None:
    ns, op = rbac_operator
    k8s.apply(
        data_recorder(
            "least",
            autoscaling={"enabled": True, "mode": "hpa", "minReplicas": 1, "maxReplicas": 2},
        ),
        ns,
    )

    def ready() -> dict[str, Any] | None:
        dr = k8s.get_json("datarecorder", "least", namespace=ns)
        conditions = {
            c["type"]: c["status"] for c in (dr.get("status") or {}).get("conditions", [])
        }
        return dr if conditions.get("Ready") == "True" else None

    # 120 s: while rbac.py lacks what kopf observes, kopf stalls ~54 s before its fallback.
    wait_for(ready, timeout=120, what="DataRecorder least Ready under the operator's own RBAC")
    assert _names(k8s, ns) >= CHILDREN

    k8s.kubectl("delete", "-n", ns, "svc", "least-recorder", "--wait=true")
    wait_for(
        lambda: k8s.kubectl("get", "-n", ns, "svc", "least-recorder", check=False).returncode == 0,
        timeout=60,
        what="the Service to be restored",
    )
    k8s.kubectl("delete", "-n", ns, "datarecorder", "least", "--wait=true", "--timeout=60s")
    # Not "no objects at all": the controller-manager puts kube-root-ca.crt in every namespace.
    wait_for(
        lambda: not CHILDREN & _names(k8s, ns),
        timeout=60,
        what="the operator's cleanup of every child",
    )

    # None of the operator's own requests (children, status, secrets, events) was refused.
    own = [line for line in _forbidden(op) if not any(k in line for k in KOPF_OBSERVED)]
    assert not own, "\n".join(own[:20])
