"""Autoscaling closer to KEDA and Strimzi: HPA caps and behavior, and the pause annotation."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from datarecorder_operator import kube, rendering
from datarecorder_operator.lag import LagReport, with_activation
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.reconcile import reconcile
from datarecorder_operator.scaler import Stabilizer
from datarecorder_operator.spec import SpecError
from datarecorder_operator.state import ObjectState, OperatorConfig

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}

LOG = logging.getLogger("tests.operator")


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
        kube.KubeClient(), body, ObjectState(), OperatorConfig(), events, LOG, apply=True
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


def test_activation_scales_to_idle_replicas_and_back() -> None:
    quiet, busy = LagReport(50, 6, 1, {}), LagReport(5000, 6, 6, {})
    assert with_activation(2, quiet, activation_lag=100, idle_replicas=0) == 0
    assert with_activation(2, busy, activation_lag=100, idle_replicas=0) == 2
    assert with_activation(2, quiet, activation_lag=100, idle_replicas=None) == 2  # off


def test_gradual_scale_down_one_step_per_window() -> None:
    stab = Stabilizer(60, step=1)
    assert stab.decide(0, 6, 6).replicas == 6
    # The lag drained: the window holds 6 until t=60, then one pod per 60 s.
    assert stab.decide(30, 1, 6).replicas == 6
    assert stab.decide(61, 1, 6).replicas == 5
    assert stab.decide(90, 1, 5).replicas == 5
    assert stab.decide(122, 1, 5).replicas == 4
    unlimited = Stabilizer(60)
    unlimited.decide(0, 6, 6)
    assert unlimited.decide(61, 1, 6).replicas == 1  # without a step: straight down


def test_keda_fields_parse_and_check_ranges() -> None:
    spec = parse_spec(
        "rec", "md",
        {**BASE, "autoscaling": {"enabled": True, "mode": "operator", "idleReplicas": 0,
                                 "activationLagThreshold": 100, "scaleDownStep": 2}},
    )  # fmt: skip
    auto = spec.autoscaling
    assert (auto.idle_replicas, auto.activation_lag_threshold, auto.scale_down_step) == (0, 100, 2)
    with pytest.raises(SpecError, match=r"spec\.autoscaling\.idleReplicas"):
        parse_spec("rec", "md", {**BASE, "autoscaling": {"idleReplicas": 1}})
