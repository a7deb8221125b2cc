"""Server-side apply and ownership of the operator's children, on the real API server.

Owns two promises: a field removed from the DataRecorder's spec is removed from its children
(one case per kind of field: map key, list item, scalar), and an object that merely has a
child's name is never taken over (a Degraded condition and a Warning event name it instead).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


@pytest.fixture(scope="module")
def operator(k8s: K8s, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    name = f"apply-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    k8s.kubectl("create", "secret", "generic", "tsdb", "-n", name, "--from-literal=password=pw")
    op = Operator(k8s, name, tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        op.wait_alive()
        yield op
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
        op.assert_no_traceback_while_running()


def _pod_spec(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    proc = k8s.kubectl("get", "-n", ns, "deploy", name, "-o", "json", check=False)
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
        "create", "configmap", f"{name}-config", "-n", ns, "--from-literal=OWNER=someone-else"
    )
    k8s.apply(data_recorder(name), ns)

    def degraded() -> dict[str, Any] | None:
        dr = k8s.get_json("datarecorder", name, namespace=ns)
        conds = {c["type"]: c for c in (dr.get("status") or {}).get("conditions") or []}
        cond = conds.get("Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(degraded, timeout=60, what=f"{name} Degraded")
    assert cond["reason"] == "ChildNotOwned"
    assert f"ConfigMap {name}-config" in cond["message"]

    def warned() -> list[dict[str, Any]]:
        events = k8s.get_json(
            "events", "--field-selector", f"involvedObject.name={name}", namespace=ns
        )["items"]
        return [e for e in events if e["type"] == "Warning" and e["reason"] == "ChildNotOwned"]

    (event, *_) = wait_for(warned, timeout=30, what="a ChildNotOwned Warning event")
    assert f"ConfigMap {name}-config" in event["message"]
    cm = k8s.get_json("configmap", f"{name}-config", namespace=ns)
    assert cm["data"] == {"OWNER": "someone-else"}
    assert not cm["metadata"].get("ownerReferences")
    # The other children are still made: only the taken name is skipped.
    wait_for(lambda: _pod_spec(k8s, ns, name), timeout=60, what=f"Deployment {name}")


def test_deletion_never_waits_for_the_operator(k8s: K8s, tmp_path_factory: Any) -> None:
    """No finalizer: with the operator stopped, a DataRecorder and a namespace holding one are
    deleted all the same (the garbage collector takes the children by owner reference)."""
    ns = f"del-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", ns)
    k8s.kubectl("create", "secret", "generic", "tsdb", "-n", ns, "--from-literal=password=pw")
    op = Operator(k8s, ns, tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        op.wait_alive()
        k8s.apply(data_recorder("one"), ns)
        k8s.apply(data_recorder("two"), ns)
        for name in ("one", "two"):
            wait_for(lambda n=name: _pod_spec(k8s, ns, n), timeout=60, what=f"Deployment {name}")
            dr = k8s.get_json("datarecorder", name, namespace=ns)
            assert not dr["metadata"].get("finalizers"), dr["metadata"]
    finally:
        op.stop()
    op.assert_no_traceback_while_running()

    k8s.kubectl("delete", "-n", ns, "datarecorder", "one", "--wait=true", "--timeout=30s")
    wait_for(
        lambda: k8s.kubectl("get", "-n", ns, "deploy", "one", check=False).returncode != 0,
        timeout=90,
        what="the garbage collector to delete Deployment one",
    )
    k8s.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", timeout=150)
    assert k8s.kubectl("get", "namespace", ns, check=False).returncode != 0
