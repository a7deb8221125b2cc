"""Server-side apply and ownership of the operator's children, on the real API server.

Owns three promises: a field removed from the DataRecorder's spec is removed from its children
(one case per kind of field: map key, list item, scalar), an object that merely has a child's
name is never taken over (a Degraded condition and a Warning event name it instead), and the
children of the old naming (`<name>`) are replaced by `<name>-recorder` ones, deleting only
the old objects the DataRecorder owns.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from datarecorder_operator import rendering
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import PAUSED_ANNOTATION

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


@pytest.fixture(scope="module")
def operator(k8s: K8s, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    name = f"apply-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    create_tsdb_secret(k8s, name)
    # The restricted policy lets spec.serviceAccountName name only listed ServiceAccounts.
    listed = ("--allowed-service-account", "recorder-sa")
    op = Operator(
        k8s, name, tmp_path_factory.mktemp("operator") / "operator.log", extra_args=listed
    )
    try:
        op.wait_alive()
        yield op
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
        op.assert_no_traceback_while_running()


def _pod_spec(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    """The pod template of the DataRecorder `name`'s Deployment (`<name>-recorder`)."""
    proc = k8s.kubectl("get", "-n", ns, "deploy", f"{name}-recorder", "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    spec: dict[str, Any] = json.loads(proc.stdout)["spec"]["template"]
    return spec


TOLERATION_A = {"key": "a", "operator": "Exists", "effect": "NoSchedule"}
TOLERATION_B = {"key": "b", "operator": "Exists", "effect": "NoSchedule"}

# (what is removed, spec before, spec after, check on the Deployment's pod template after)
REMOVALS = [
    pytest.param(
        {"nodeSelector": {"disk": "ssd", "zone": "a"}},
        {"nodeSelector": {"disk": "ssd"}},
        lambda t: t["spec"].get("nodeSelector") == {"disk": "ssd"},
        id="map-key-nodeSelector",
    ),
    pytest.param(
        {"podLabels": {"team": "md", "tier": "x"}},
        {"podLabels": {"team": "md"}},
        lambda t: "tier" not in t["metadata"]["labels"] and t["metadata"]["labels"]["team"] == "md",
        id="map-key-podLabels",
    ),
    pytest.param(
        {"resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
        {"resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}},
        lambda t: "cpu" not in t["spec"]["containers"][0]["resources"]["limits"],
        id="map-key-limits-cpu",
    ),
    pytest.param(
        {"tolerations": [TOLERATION_A, TOLERATION_B]},
        {"tolerations": [TOLERATION_A]},
        lambda t: [x["key"] for x in t["spec"].get("tolerations") or []] == ["a"],
        id="list-item-toleration",
    ),
    pytest.param(
        {"serviceAccountName": "recorder-sa"},
        {},
        lambda t: (
            t["spec"].get("serviceAccountName") == "default"
            and t["spec"].get("serviceAccount") in (None, "default")
        ),
        id="scalar-serviceAccountName",
    ),
]


@pytest.mark.parametrize(("before", "after", "removed"), REMOVALS)
def test_a_field_removed_from_the_spec_is_removed_from_the_deployment(
    k8s: K8s, operator: Operator, before: dict[str, Any], after: dict[str, Any], removed: Any
) -> None:
    ns = operator.namespace
    name = f"rm-{uuid.uuid4().hex[:6]}"
    k8s.apply(data_recorder(name, **before), ns)
    first = wait_for(lambda: _pod_spec(k8s, ns, name), timeout=60, what=f"Deployment {name}")
    assert not removed(first), "the field to remove is not there to begin with"
    # kubectl apply: its last-applied annotation makes it remove what `after` drops, and as a
    # patch it cannot lose a race with the operator's own writes (a replace can: 409).
    k8s.apply(data_recorder(name, **after), ns)
    wait_for(
        lambda: (t := _pod_spec(k8s, ns, name)) is not None and removed(t),
        timeout=60,
        what=f"the removed field to leave Deployment {name}",
    )


def test_an_object_it_does_not_own_is_left_alone_and_reported(k8s: K8s, operator: Operator) -> None:
    ns = operator.namespace
    name = f"taken-{uuid.uuid4().hex[:6]}"
    k8s.kubectl(
        "create",
        "configmap",
        f"{name}-recorder-config",
        "-n",
        ns,
        "--from-literal=OWNER=someone-else",
    )
    k8s.apply(data_recorder(name), ns)

    def degraded() -> dict[str, Any] | None:
        dr = k8s.get_json("datarecorder", name, namespace=ns)
        conds = {c["type"]: c for c in (dr.get("status") or {}).get("conditions") or []}
        cond = conds.get("Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(degraded, timeout=60, what=f"{name} Degraded")
    assert cond["reason"] == "ChildNotOwned"
    assert f"ConfigMap {name}-recorder-config" in cond["message"]

    def warned() -> list[dict[str, Any]]:
        events = k8s.get_json(
            "events", "--field-selector", f"involvedObject.name={name}", namespace=ns
        )["items"]
        return [e for e in events if e["type"] == "Warning" and e["reason"] == "ChildNotOwned"]

    (event, *_) = wait_for(warned, timeout=30, what="a ChildNotOwned Warning event")
    assert f"ConfigMap {name}-recorder-config" in event["message"]
    cm = k8s.get_json("configmap", f"{name}-recorder-config", namespace=ns)
    assert cm["data"] == {"OWNER": "someone-else"}
    assert not cm["metadata"].get("ownerReferences")
    # The other children are still made: only the taken name is skipped.
    wait_for(lambda: _pod_spec(k8s, ns, name), timeout=60, what=f"Deployment {name}")


def test_deletion_never_waits_for_the_operator(k8s: K8s, tmp_path_factory: Any) -> None:
    """No finalizer: with the operator stopped, a DataRecorder and a namespace holding one are
    deleted all the same (the garbage collector takes the children by owner reference)."""
    ns = f"del-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", ns)
    create_tsdb_secret(k8s, ns)
    op = Operator(k8s, ns, tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        op.wait_alive()
        k8s.apply(data_recorder("one"), ns)
        k8s.apply(data_recorder("two"), ns)
        for name in ("one", "two"):
            wait_for(partial(_pod_spec, k8s, ns, name), timeout=60, what=f"Deployment {name}")
            dr = k8s.get_json("datarecorder", name, namespace=ns)
            assert not dr["metadata"].get("finalizers"), dr["metadata"]
    finally:
        op.stop()
    op.assert_no_traceback_while_running()

    k8s.kubectl("delete", "-n", ns, "datarecorder", "one", "--wait=true", "--timeout=30s")
    wait_for(
        lambda: k8s.kubectl("get", "-n", ns, "deploy", "one-recorder", check=False).returncode != 0,
        timeout=90,
        what="the garbage collector to delete Deployment one-recorder",
    )
    k8s.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", timeout=150)
    assert k8s.kubectl("get", "namespace", ns, check=False).returncode != 0


def _exists(k8s: K8s, ns: str, kind: str, name: str) -> bool:
    return k8s.kubectl("get", "-n", ns, kind, name, check=False).returncode == 0


def _legacy(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """A child as the operator rendered it before the rename: named `<name>` (`<name>-config`)."""
    old = copy.deepcopy(manifest)
    old["metadata"]["name"] = f"{name}-config" if old["kind"] == "ConfigMap" else name
    if old["kind"] == "Deployment":
        (container,) = old["spec"]["template"]["spec"]["containers"]
        container["envFrom"][0]["configMapRef"]["name"] = f"{name}-config"
    if old["kind"] == "HorizontalPodAutoscaler":
        old["spec"]["scaleTargetRef"]["name"] = name
    return old


def test_children_of_the_old_naming_are_migrated(k8s: K8s, operator: Operator) -> None:
    """A DataRecorder reconciled by a release that named its children `<name>`: the operator
    makes `<name>-recorder` children, the new Deployment starts at the old one's replicas, and
    the old children it owns are deleted once the new Deployment is available; an old-name
    object it does not own (here the user's own Service) is left alone."""
    ns = operator.namespace
    name = f"mig-{uuid.uuid4().hex[:6]}"
    auto = {"enabled": True, "mode": "hpa", "minReplicas": 1, "maxReplicas": 4}
    manifest = data_recorder(name, autoscaling=auto)  # a PDB by default
    # Paused while the old children are put in place, as if an old release had made them.
    manifest["metadata"]["annotations"] = {PAUSED_ANNOTATION: "true"}
    k8s.apply(manifest, ns)
    uid = k8s.get_json("datarecorder", name, namespace=ns)["metadata"]["uid"]
    spec = parse_spec(name, ns, manifest["spec"])
    old_kinds = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for child in rendering.render_children(spec, current_replicas=2):
        old = _legacy(child, name)
        if child["kind"] in old_kinds:
            old["metadata"]["ownerReferences"] = [rendering.owner_reference(name, uid)]
            k8s.apply(old, ns)
        elif child["kind"] == "Service":
            k8s.apply(old, ns)  # no ownerReference: the user's own Service of that name
    wait_for(
        lambda: (
            k8s.get_json("deploy", name, namespace=ns).get("status", {}).get("readyReplicas") == 2
        ),
        timeout=90,
        what=f"the old Deployment {name} running 2 pods",
    )

    k8s.kubectl("annotate", "-n", ns, "datarecorder", name, f"{PAUSED_ANNOTATION}-")
    gone = {
        "deploy": name,
        "cm": f"{name}-config",
        "hpa": name,
        "pdb": name,
    }
    wait_for(
        lambda: not any(_exists(k8s, ns, kind, n) for kind, n in gone.items()),
        timeout=120,
        what="the old children the DataRecorder owns to be deleted",
    )
    new = k8s.get_json("deploy", f"{name}-recorder", namespace=ns)
    assert new["spec"]["replicas"] == 2  # where the HPA had the old one, not minReplicas
    assert (new["status"].get("availableReplicas") or 0) >= 2  # deleted only once available
    for kind, child_name in (
        ("cm", f"{name}-recorder-config"),
        ("svc", f"{name}-recorder"),
        ("pdb", f"{name}-recorder"),
        ("hpa", f"{name}-recorder"),
    ):
        refs = k8s.get_json(kind, child_name, namespace=ns)["metadata"]["ownerReferences"]
        assert [r["uid"] for r in refs] == [uid], (kind, child_name)
    hpa = k8s.get_json("hpa", f"{name}-recorder", namespace=ns)
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{name}-recorder"
    service = k8s.get_json("svc", name, namespace=ns)  # not ours: still there, untouched
    assert not service["metadata"].get("ownerReferences")
    assert f"deleted Deployment {name}: replaced by Deployment {name}-recorder" in operator.log()
