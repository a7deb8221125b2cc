"""spec.state paused in the operator: the pods stay (replicas as running would keep them), the
recorder's environment gains PAUSED=true, autoscaling is suspended, and the status says Paused.

Owns the rendering of a pause (environment, rollout strategy, PDB) and its conditions.
"""

from __future__ import annotations

from typing import Any

from datarecorder_operator import environment, metrics, rendering, status
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import RecorderSpec

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}


def spec(**fields: Any) -> RecorderSpec:
    return parse_spec("rec", "md", {**BASE, **fields})


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def test_paused_renders_paused_true_and_running_renders_no_such_key() -> None:
    assert environment.config_data(spec(state="paused"))["PAUSED"] == "true"
    assert "PAUSED" not in environment.config_data(spec())
    assert "PAUSED" not in environment.config_data(spec(state="stopped"))
    # The environment changes, so does the hash on the pod template: the pods roll into it.
    assert environment.config_hash(spec(state="paused")) != environment.config_hash(spec())


def test_paused_keeps_the_pods_and_suspends_autoscaling() -> None:
    for mode in ("hpa", "operator"):
        auto = {"enabled": True, "mode": mode, "minReplicas": 2, "maxReplicas": 6}
        paused = spec(state="paused", autoscaling=auto)
        assert not paused.hpa_scaled and not paused.operator_scaled
        children = by_kind(rendering.render_children(paused, current_replicas=4))
        assert "HorizontalPodAutoscaler" not in children
        assert children["Deployment"]["spec"]["replicas"] == 4  # neither 0 nor rescaled
        assert "annotations" not in children["Deployment"]["metadata"]  # no count to restore
        # Once an HPA had written the count, the field stays the HPA's last word.
        owned = rendering.render_children(paused, current_replicas=4, replicas_owned_elsewhere=True)
        assert "replicas" not in by_kind(owned)["Deployment"]["spec"]
    fixed = by_kind(rendering.render_children(spec(state="paused", replicas=3)))
    assert fixed["Deployment"]["spec"]["replicas"] == 3


def test_a_pause_replaces_every_pod_at_once_and_paused_pods_do_not_block_drains() -> None:
    """A paused pod is never ready: a surge-first rollout into the pause would wait for it
    forever while the old pods kept recording; a PDB would keep a node from draining."""
    paused = by_kind(rendering.render_children(spec(state="paused", pdb={"enabled": True})))
    rolling = paused["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 0, "maxUnavailable": "100%"}
    assert paused["PodDisruptionBudget"]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    running = by_kind(rendering.render_children(spec(pdb={"enabled": True})))
    rolling = running["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 1, "maxUnavailable": 0}
    assert "unhealthyPodEvictionPolicy" not in running["PodDisruptionBudget"]["spec"]


def observed(replicas: int, pods: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "replicas": pods,
            "updatedReplicas": pods,
            "readyReplicas": ready,
        },
    }


def conditions(obs: status.Observation) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.conditions_for(obs)}


def test_paused_status_is_not_ready_with_reason_paused() -> None:
    # Pods ready or not (kwok's are, real paused ones are not): Ready=False reason Paused.
    for ready in (0, 2):
        obs = status.Observation(generation=2, deployment=observed(2, 2, ready), state="paused")
        got = conditions(obs)
        assert got["Ready"] == ("False", "Paused")
        assert got["Progressing"] == ("False", "Paused")
        assert got["Degraded"] == ("False", "AsExpected")
        assert status.compute_status(obs, None, now="t")["state"] == "paused"
    rolling = status.Observation(generation=2, deployment=observed(2, 1, 0), state="paused")
    assert conditions(rolling)["Progressing"] == ("True", "RollingOut")
    message = {c["type"]: c["message"] for c in status.conditions_for(rolling)}["Ready"]
    assert "fetch nothing" in message and "spec.state: running" in message


def test_recorders_gauge_counts_paused() -> None:
    metrics.set_recorders(["paused", "running", "paused"])
    value = metrics.REGISTRY.get_sample_value(
        "datarecorder_operator_recorders", {"state": "paused"}
    )
    assert value == 2
