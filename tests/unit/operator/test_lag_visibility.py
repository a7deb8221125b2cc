"""Lag that fails visibly: a LagAvailable condition, and KEDA-style fallback replicas."""

from __future__ import annotations

from typing import Any

from datarecorder_operator import status
from datarecorder_operator.autoscaling import fallback_replicas
from datarecorder_operator.parsing import parse_spec

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}


def auto(**fields: Any) -> Any:
    scaling = {"enabled": True, "mode": "operator", "maxReplicas": 6, **fields}
    return parse_spec("rec", "md", {**BASE, "autoscaling": scaling})


def test_fallback_after_the_threshold_only() -> None:
    spec = auto(fallback={"failureThreshold": 3, "replicas": 4})
    assert [fallback_replicas(spec, n) for n in range(5)] == [None, None, None, 4, 4]


def test_fallback_never_exceeds_max_replicas_and_is_off_by_default() -> None:
    assert fallback_replicas(auto(fallback={"replicas": 50}), 3) == 6
    assert fallback_replicas(auto(), 100) is None


def _types(obs: status.Observation) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.conditions_for(obs)}


def test_lag_available_condition_follows_the_reads() -> None:
    deployment = {"spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 1}}
    failing = status.Observation(
        generation=1, deployment=deployment, lag_available=False, lag_error="cannot read lag: x"
    )
    cond = _types(failing)["LagAvailable"]
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        "LagReadFailed",
        "cannot read lag: x",
    )
    ok = status.Observation(generation=1, deployment=deployment, lag_available=True)
    assert _types(ok)["LagAvailable"]["status"] == "True"
    # Where lag is not read at all there is no such condition.
    assert "LagAvailable" not in _types(status.Observation(generation=1, deployment=deployment))
