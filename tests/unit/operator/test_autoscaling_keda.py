"""Autoscaling closer to KEDA and Strimzi: HPA caps and behavior, and the pause annotation."""

from __future__ import annotations

from typing import Any

from datarecorder_operator import kube, rendering
from datarecorder_operator.reconcile import ObjectState, OperatorConfig, reconcile
from datarecorder_operator.spec import parse_spec

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}


def hpa_spec(**auto: Any) -> Any:
    scaling = {"enabled": True, "mode": "hpa", "minReplicas": 1, "maxReplicas": 10, **auto}
    return parse_spec(
        "rec", "md", {**BASE, "autoscaling": scaling, "batching": {"numConsumers": 2}}
    )


def test_hpa_max_replicas_is_capped_at_partitions_per_consumer() -> None:
    spec = hpa_spec()
    assert rendering.render_hpa(spec)["spec"]["maxReplicas"] == 10  # partitions not known yet
    assert rendering.render_hpa(spec, partitions=12)["spec"]["maxReplicas"] == 6  # 12 ÷ 2
    assert rendering.render_hpa(spec, partitions=40)["spec"]["maxReplicas"] == 10
    assert rendering.render_hpa(spec, partitions=1)["spec"]["maxReplicas"] == 1  # >= min


def test_hpa_behavior_passes_through() -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 600, "selectPolicy": "Disabled"}}
    assert rendering.render_hpa(hpa_spec(behavior=behavior))["spec"]["behavior"] == behavior
    default = rendering.render_hpa(hpa_spec())["spec"]["behavior"]
    assert default["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]


async def test_a_paused_resource_is_left_alone_and_says_so() -> None:
    body = {
        "apiVersion": "datarecorder.dev/v1alpha1",
        "kind": "DataRecorder",
        "metadata": {
            "name": "rec",
            "namespace": "md",
            "uid": "u1",
            "generation": 3,
            "annotations": {"datarecorder.dev/paused": "true"},
        },
        "spec": BASE,
    }
    posted: list[tuple[str, str, str]] = []

    async def events(type_: str, reason: str, message: str) -> None:
        posted.append((type_, reason, message))

    # A client that never logged in: any request would raise, so none is made.
    outcome = await reconcile(
        kube.KubeClient(), body, ObjectState(), OperatorConfig(), events, None, apply=True
    )
    assert outcome.error is None and not posted
    assert outcome.status is not None
    (cond,) = outcome.status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "ReconciliationPaused",
        "True",
        "Paused",
    )
    assert outcome.status["observedGeneration"] == 3
