"""Children are named `<name>-recorder`; the pure rules of retiring the old names (`<name>`).

The I/O of the migration is tested on the real API server in
tests/integration/k8s/test_operator_apply.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from datarecorder_operator import children, handlers, migration, naming, rendering
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import API_VERSION, KIND, SpecError

from tests.unit.operator.helpers import example, example_spec


@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml", "hpa.yaml"])
def test_every_child_is_named_name_recorder(example: str) -> None:
    spec = example_spec(example)
    base = naming.child_name(spec.name, "Deployment")
    assert base == f"{spec.name}-recorder"
    for child in rendering.render_children(spec):
        want = f"{base}-config" if child["kind"] == "ConfigMap" else base
        assert child["metadata"]["name"] == want, child["kind"]
    hpa = [c for c in rendering.render_children(spec) if c["kind"] == "HorizontalPodAutoscaler"]
    assert all(h["spec"]["scaleTargetRef"]["name"] == base for h in hpa)


def test_the_longest_name_still_makes_a_valid_service_name() -> None:
    body = example("minimal.yaml")["spec"]
    spec = parse_spec("r" * 54, "md", body)
    assert len(naming.child_name(spec.name, "Service")) == 63  # a DNS-1035 label's limit
    with pytest.raises(SpecError, match="at most 54"):
        parse_spec("r" * 55, "md", body)


def test_deletion_covers_new_and_old_names() -> None:
    names = {(kind, name) for _, kind, name in children.child_names("rec")}
    assert ("Deployment", "rec-recorder") in names and ("Deployment", "rec") in names
    assert ("ConfigMap", "rec-recorder-config") in names and ("ConfigMap", "rec-config") in names
    assert ("PodDisruptionBudget", "rec") in names and ("ServiceAccount", "rec") in names


def test_old_pdb_and_hpa_go_first_and_the_workload_before_what_it_uses() -> None:
    order = [kind for _, kind in migration.LEGACY_KINDS]
    assert order[:2] == ["PodDisruptionBudget", "HorizontalPodAutoscaler"]
    assert order.index("Deployment") < order.index("ConfigMap")
    assert order.index("Deployment") < order.index("ServiceAccount")
    assert naming.child_name("rec", "ConfigMap", legacy=True) == "rec-config"
    assert naming.child_name("rec", "Service", legacy=True) == "rec"


def _deployment(replicas: int, available: int, updated: int, generation: int = 2) -> Any:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "availableReplicas": available,
            "updatedReplicas": updated,
        },
    }


@pytest.mark.parametrize(
    ("deployment", "ready"),
    [
        (None, False),
        (_deployment(2, 2, 2), True),
        (_deployment(2, 1, 2), False),  # one pod still starting
        (_deployment(2, 2, 1), False),  # an old ReplicaSet's pod counts as available
        (_deployment(2, 2, 2, generation=3), False),  # the controller has not seen the change
        (_deployment(0, 0, 0, generation=3), True),  # nothing to wait for
        ({"metadata": {}, "spec": {"replicas": 0}}, True),
        ({"metadata": {}, "spec": {}}, False),  # 1 replica by default, none available
    ],
)
def test_old_children_wait_for_the_new_deployment(deployment: Any, ready: bool) -> None:
    assert migration.available(deployment) is ready


def _owned(name: str, owner: str) -> dict[str, Any]:
    ref = {"apiVersion": API_VERSION, "kind": KIND, "name": owner, "uid": "u1"}
    return {"metadata": {"name": name, "ownerReferences": [ref]}}


def test_the_watch_index_keeps_only_the_new_deployment() -> None:
    assert handlers.owner_uid(_owned("rec-recorder", "rec")) == "u1"
    assert handlers.owner_uid(_owned("rec", "rec")) is None  # the old one, being retired
    assert handlers.owner_uid({"metadata": {"name": "rec-recorder"}}) is None
