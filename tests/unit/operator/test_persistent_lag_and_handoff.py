"""KEDA's excludePersistentLag, the replicas hand-off to an autoscaler, and the custom metrics
condition: the pure parts (the hand-off and the condition also run on the real control plane in
tests/integration/k8s/test_operator_autoscaling.py)."""

from __future__ import annotations

from typing import Any

from datarecorder_operator import status
from datarecorder_operator.lag import (
    PartitionOffsets,
    committed_offsets,
    compute_lag,
    excluding,
    persistent_partitions,
)
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.rendering import render_children
from datarecorder_operator.replicas import applies_replicas

from tests.unit.operator.helpers import example


def _offsets(*rows: tuple[int, int | None]) -> list[PartitionOffsets]:
    return [PartitionOffsets("t", i, end, committed) for i, (end, committed) in enumerate(rows)]


def test_a_partition_whose_commit_did_not_move_is_persistent() -> None:
    first = _offsets((100, 10), (100, 50), (100, 100))
    second = _offsets((150, 10), (160, 90), (120, 100))  # p0 stuck, p1 moving, p2 caught up
    report = compute_lag(second)
    assert persistent_partitions(report, committed_offsets(second), None) == set()  # first poll
    stuck = persistent_partitions(report, committed_offsets(second), committed_offsets(first))
    assert stuck == {("t", 0), ("t", 2)}  # p2: 20 new records, and its commit did not move


def test_a_partition_with_no_lag_is_never_persistent() -> None:
    before = _offsets((100, 100))
    now = _offsets((100, 100))
    report = compute_lag(now)
    assert persistent_partitions(report, committed_offsets(now), committed_offsets(before)) == set()


def test_excluded_partitions_count_no_lag_but_still_count() -> None:
    report = compute_lag(_offsets((150, 10), (160, 90)))
    out = excluding(report, {("t", 0)})
    assert (out.total, out.partitions, out.partitions_with_lag) == (70, 2, 1)
    assert excluding(report, set()) is report


def _deployment(managers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"managedFields": managers}}


def test_replicas_are_ours_until_an_update_takes_them() -> None:
    ours = {
        "manager": "datarecorder-operator",
        "operation": "Apply",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
    }
    assert applies_replicas(_deployment([ours]), "datarecorder-operator")
    moved = {**ours, "fieldsV1": {"f:spec": {"f:template": {}}}}
    hpa = {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "subresource": "scale",
        "fieldsV1": {"f:spec": {"f:replicas": {}}},
    }
    assert not applies_replicas(_deployment([moved, hpa]), "datarecorder-operator")
    assert not applies_replicas({"metadata": {}}, "datarecorder-operator")


def test_an_autoscaled_deployment_owned_elsewhere_is_applied_without_replicas() -> None:
    doc = example("hpa.yaml")
    spec = parse_spec(doc["metadata"]["name"], doc["metadata"]["namespace"], doc["spec"])
    kept = render_children(spec, current_replicas=3)
    assert kept[1]["spec"]["replicas"] == 3
    handed = render_children(spec, current_replicas=3, replicas_owned_elsewhere=True)
    assert "replicas" not in handed[1]["spec"]
    fixed = parse_spec("r", "ns", {**doc["spec"], "autoscaling": {"enabled": False}})
    # Fixed replicas are the operator's again, whoever scaled last.
    rendered = render_children(fixed, replicas_owned_elsewhere=True)[1]
    assert rendered["spec"]["replicas"] == fixed.replicas


def test_the_custom_metrics_condition_names_the_api() -> None:
    obs = status.Observation(generation=1, custom_metrics_served=False)
    (cond,) = [c for c in status.conditions_for(obs) if c["type"] == status.CUSTOM_METRICS]
    assert (cond["status"], cond["reason"]) == ("False", "APINotServed")
    assert "custom.metrics.k8s.io/v1beta1" in cond["message"]
    served = status.Observation(generation=1, custom_metrics_served=True)
    assert {c["type"]: c["status"] for c in status.conditions_for(served)}[
        status.CUSTOM_METRICS
    ] == "True"
    assert status.CUSTOM_METRICS not in {
        c["type"] for c in status.conditions_for(status.Observation(generation=1))
    }


def test_a_partition_without_a_commit_is_never_persistent() -> None:
    offsets = _offsets((100, None))
    report = compute_lag(offsets)
    committed = committed_offsets(offsets)
    assert persistent_partitions(report, committed, committed) == set()
