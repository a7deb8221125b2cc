"""Strimzi's and KEDA's verbs in the operator: spec.state (stopped scales to 0 and suspends
autoscaling, running restores), the restart annotation, and the recorders-by-state gauge.

Owns the property test of `render_children` over generated state/autoscaling/replica inputs,
and a reconcile pass on an in-memory client (a stopped recorder in mode operator is not scaled).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from datarecorder_operator import drift, kube, metrics, rendering, status, workload
from datarecorder_operator import replicas as replica_rules
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import PERMISSIVE
from datarecorder_operator.reconcile import reconcile
from datarecorder_operator.spec import RESTART_ANNOTATION, RecorderSpec, SpecError
from datarecorder_operator.state import ObjectState, OperatorConfig
from hypothesis import given, settings
from hypothesis import strategies as st

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
BEFORE = replica_rules.REPLICAS_BEFORE_STOP_ANNOTATION
LOG = logging.getLogger("tests.operator")


def spec(**fields: Any) -> RecorderSpec:
    return parse_spec("rec", "md", {**BASE, **fields})


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def hpa(**auto: Any) -> dict[str, Any]:
    return {"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 6, **auto}


# --- spec.state --------------------------------------------------------------------------------


def test_state_defaults_to_running_and_refuses_what_it_does_not_know() -> None:
    assert spec().state == "running" and not spec().stopped
    assert spec(state="stopped").stopped
    assert spec(state="paused").flow_paused and not spec(state="paused").stopped
    with pytest.raises(
        SpecError, match=r"spec\.state must be one of running, paused, stopped, got 'frozen'"
    ):
        spec(state="frozen")


def test_stopped_renders_zero_replicas_no_hpa_and_remembers_the_count() -> None:
    stopped = spec(state="stopped", autoscaling=hpa())
    assert not stopped.hpa_scaled and not stopped.operator_scaled
    # The HPA had scaled the Deployment to 5 (it owns the field): the forced apply takes it.
    children = by_kind(
        rendering.render_children(stopped, current_replicas=5, replicas_owned_elsewhere=True)
    )
    assert "HorizontalPodAutoscaler" not in children
    deployment = children["Deployment"]
    assert deployment["spec"]["replicas"] == 0
    assert deployment["metadata"]["annotations"] == {BEFORE: "5"}
    # A later pass sees 0 on the Deployment and keeps the count it remembered.
    again = by_kind(rendering.render_children(stopped, current_replicas=0, before_stop=5))
    assert again["Deployment"]["metadata"]["annotations"] == {BEFORE: "5"}


def test_running_again_restores_the_replicas_and_the_hpa() -> None:
    running = spec(autoscaling=hpa())
    children = by_kind(rendering.render_children(running, current_replicas=0, before_stop=5))
    assert children["Deployment"]["spec"]["replicas"] == 5
    assert "annotations" not in children["Deployment"]["metadata"]
    assert children["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2
    # Within the autoscaler's bounds, which may have changed while stopped.
    assert (
        by_kind(rendering.render_children(running, before_stop=40))["Deployment"]["spec"][
            "replicas"
        ]
        == 6
    )
    # Without autoscaling, spec.replicas is the count.
    plain = spec(replicas=3)
    assert (
        by_kind(rendering.render_children(plain, before_stop=7))["Deployment"]["spec"]["replicas"]
        == 3
    )


def test_a_stopped_deployment_is_reapplied_when_scaled_behind_the_operators_back() -> None:
    stopped = spec(state="stopped", autoscaling=hpa())
    desired = drift.stamped(by_kind(rendering.render_children(stopped))["Deployment"])
    actual = copy.deepcopy(desired)
    assert not drift.needs_apply(desired, actual)
    actual["spec"]["replicas"] = 3  # an HPA, kubectl scale
    assert drift.needs_apply(desired, actual)


STATES = st.sampled_from(["running", "paused", "stopped"])
COUNTS = st.one_of(st.none(), st.integers(0, 12))


@st.composite
def autoscaling(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(1, 5))
    return {
        "enabled": draw(st.booleans()),
        "mode": draw(st.sampled_from(["hpa", "operator"])),
        "minReplicas": low,
        "maxReplicas": draw(st.integers(low, 8)),
    }


@settings(max_examples=300, deadline=None)
@given(
    state=STATES,
    auto=autoscaling(),
    replicas=st.integers(0, 10),
    current=COUNTS,
    elsewhere=st.booleans(),
    before=COUNTS,
)
def test_generated_specs_keep_the_state_rules(
    state: str,
    auto: dict[str, Any],
    replicas: int,
    current: int | None,
    elsewhere: bool,
    before: int | None,
) -> None:
    parsed = spec(state=state, autoscaling=auto, replicas=replicas)
    children = by_kind(
        rendering.render_children(
            parsed,
            current_replicas=current,
            replicas_owned_elsewhere=elsewhere,
            before_stop=before,
        )
    )
    deployment = children["Deployment"]
    got = deployment["spec"].get("replicas")
    remembered = replica_rules.replicas_before_stop(deployment)
    lo, hi = auto["minReplicas"], auto["maxReplicas"]
    if state == "stopped":
        # Nothing may scale a stopped recorder: 0 replicas, no HPA, whoever owned the field.
        assert got == 0 and "HorizontalPodAutoscaler" not in children
        assert remembered is not None
        if before is not None:
            assert remembered == before
        elif current:
            assert remembered == current
        # And running again comes back to what was remembered (within the bounds).
        back = by_kind(
            rendering.render_children(
                spec(autoscaling=auto, replicas=replicas),
                current_replicas=0,
                before_stop=remembered,
            )
        )["Deployment"]["spec"]["replicas"]
        assert back == (min(max(remembered, lo), hi) if auto["enabled"] else replicas)
        return
    assert remembered is None
    # Paused keeps the replicas as running would, but suspends autoscaling too.
    hpa_wanted = auto["enabled"] and auto["mode"] == "hpa" and state == "running"
    assert ("HorizontalPodAutoscaler" in children) == hpa_wanted
    if not auto["enabled"]:
        assert got == replicas
    elif before is not None:
        assert got == min(max(before, lo), hi)
    elif elsewhere:
        assert got is None  # left to the autoscaler that owns it
    else:
        assert got == (current if current is not None else lo)


# --- restart annotation ------------------------------------------------------------------------


def template_annotations(deployment: Mapping[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["annotations"])


def test_restart_value_goes_on_the_pod_template_and_rolls_once_per_value() -> None:
    parsed = spec()
    plain = drift.stamped(workload.render_deployment(parsed, 1))
    assert RESTART_ANNOTATION not in template_annotations(plain)
    first = drift.stamped(workload.render_deployment(parsed, 1, restart="2026-12-07T01"))
    assert template_annotations(first)[RESTART_ANNOTATION] == "2026-12-07T01"
    assert drift.needs_apply(first, plain)  # a new value: the template changes, pods roll
    assert not drift.needs_apply(first, copy.deepcopy(first))  # the same value: nothing
    second = drift.stamped(workload.render_deployment(parsed, 1, restart="again"))
    assert drift.needs_apply(second, first)


def test_removing_the_annotation_keeps_the_templates_value() -> None:
    deployment = workload.render_deployment(spec(), 1, restart="r1")
    assert workload.restart_value({RESTART_ANNOTATION: "r2"}, deployment) == "r2"
    assert workload.restart_value({}, deployment) == "r1"  # no second roll
    assert workload.restart_value(None, None) is None
    assert workload.restart_value({RESTART_ANNOTATION: "r1"}, None) == "r1"


def test_last_restart_is_recorded_once_per_value() -> None:
    rolled = workload.render_deployment(spec(), 1, restart="r1")
    first = status.last_restart(None, rolled, now="2026-12-07T01:00:00Z")
    assert first == {"value": "r1", "time": "2026-12-07T01:00:00Z"}
    # A later pass, or a restarted operator: the same value keeps its time.
    assert status.last_restart(first, rolled, now="2026-12-07T02:00:00Z") == first
    assert status.last_restart(first, workload.render_deployment(spec(), 1), now="x") == first
    assert status.last_restart(None, workload.render_deployment(spec(), 1), now="x") is None
    again = workload.render_deployment(spec(), 1, restart="r2")
    assert status.last_restart(first, again, now="t2") == {"value": "r2", "time": "t2"}


# --- status ------------------------------------------------------------------------------------


def observed(replicas: int, pods: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, "replicas": pods, "updatedReplicas": pods},
    }


def conditions(obs: status.Observation) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.conditions_for(obs)}


def test_stopped_status_says_so_and_is_ready_once_the_pods_are_gone() -> None:
    stopping = status.Observation(generation=2, deployment=observed(0, 2), state="stopped")
    assert conditions(stopping)["Ready"] == ("False", "Stopping")
    assert conditions(stopping)["Progressing"] == ("True", "Stopping")
    stopped = status.Observation(generation=2, deployment=observed(0, 0), state="stopped")
    assert conditions(stopped)["Ready"] == ("True", "Stopped")
    assert conditions(stopped)["Progressing"] == ("False", "Stopped")
    assert conditions(stopped)["Degraded"] == ("False", "AsExpected")
    assert status.compute_status(stopped, None, now="t")["state"] == "stopped"
    # A pass that does not know the state (reconciliation paused) keeps the last one.
    paused = status.Observation(generation=2, paused=True)
    assert status.compute_status(paused, {"state": "stopped"}, now="t")["state"] == "stopped"


# --- a reconcile pass --------------------------------------------------------------------------


class MemoryClient(kube.KubeClient):
    """Just enough of the API server for one pass: objects by (kind, name), writes recorded."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        super().__init__()
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.patches: list[tuple[str, str, Mapping[str, Any]]] = []
        self.deleted: list[tuple[str, str]] = []

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(manifest))
        self.objects[(stored["kind"], stored["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        self.patches.append((kind, name, patch))
        return copy.deepcopy(self.objects.get((kind, name)))

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        self.deleted.append((kind, name))
        return self.objects.pop((kind, name), None) is not None

    async def serves(self, api_version: str, plural: str) -> bool:
        return False

    async def api_available(self, api_version: str) -> bool:
        return False


def body(spec_fields: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> Any:
    return {
        "apiVersion": "datarecorder.dev/v1alpha1",
        "kind": "DataRecorder",
        "metadata": {
            "name": "rec",
            "namespace": "md",
            "uid": "u1",
            "generation": 4,
            "annotations": dict(annotations or {}),
        },
        "spec": {**BASE, **spec_fields},
    }


def owned(manifest: dict[str, Any], replicas: int) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["metadata"]["ownerReferences"] = [rendering.owner_reference("rec", "u1")]
    out["spec"]["replicas"] = replicas
    return out


async def test_a_stopped_recorder_in_mode_operator_is_not_scaled_back_up() -> None:
    """KEDA's fallback would scale to 3 after failed lag reads; stopped, nothing scales."""
    auto = {
        "enabled": True,
        "mode": "operator",
        "minReplicas": 1,
        "maxReplicas": 4,
        "fallback": {"failureThreshold": 1, "replicas": 3},
    }
    running = spec(autoscaling=auto)
    deployment = owned(by_kind(rendering.render_children(running))["Deployment"], 2)
    client = MemoryClient([deployment])
    state = ObjectState(lag_failures=5, last_lag_poll=0.0)  # lag unknown, no poll due
    # Permissive: these passes are about the state, not about the Secrets' marks.
    config = OperatorConfig(read_lag=False, policy=PERMISSIVE)
    posted: list[tuple[str, str, str]] = []

    async def events(type_: str, reason: str, message: str) -> None:
        posted.append((type_, reason, message))

    stopped = body({"autoscaling": auto, "state": "stopped"})
    outcome = await reconcile(client, stopped, state, config, events, LOG, apply=True, now=1)
    assert outcome.error is None, outcome.error
    stored = client.objects[("Deployment", "rec-recorder")]
    assert stored["spec"]["replicas"] == 0
    assert stored["metadata"]["annotations"][BEFORE] == "2"
    assert not client.patches, client.patches  # no scale patch (the fallback's 3)
    assert state.phase == "stopped"
    assert outcome.status is not None and outcome.status["state"] == "stopped"
    # A restart asked while stopped is recorded, with one event.
    outcome = await reconcile(
        client,
        body({"autoscaling": auto, "state": "stopped"}, {RESTART_ANNOTATION: "r1"}),
        state,
        config,
        events,
        LOG,
        apply=True,
        now=2,
    )
    assert outcome.status is not None
    assert outcome.status["lastRestart"]["value"] == "r1"
    assert [p[1] for p in posted] == ["Restarted"]


def test_recorders_gauge_counts_every_state() -> None:
    metrics.set_recorders(["running", "stopped", "running", "invalid", None])

    def value(state: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(
            "datarecorder_operator_recorders", {"state": state}
        )

    assert (value("running"), value("stopped"), value("invalid")) == (2, 1, 1)
    assert value("reconcile_paused") == 0


async def test_a_new_recorder_with_a_restart_value_records_it_without_an_event() -> None:
    """Created with the annotation: the pods start with the value (status.lastRestart says so),
    but nothing was rolled, so no `Restarted` event; the same value later rolls nothing."""
    client = MemoryClient([])
    state = ObjectState(last_lag_poll=0.0)
    config = OperatorConfig(read_lag=False, policy=PERMISSIVE)
    posted: list[tuple[str, str, str]] = []

    async def events(type_: str, reason: str, message: str) -> None:
        posted.append((type_, reason, message))

    fresh = body({}, {RESTART_ANNOTATION: "r0"})
    outcome = await reconcile(client, fresh, state, config, events, LOG, apply=True, now=1)
    assert outcome.status is not None and outcome.status["lastRestart"]["value"] == "r0"
    stored = client.objects[("Deployment", "rec-recorder")]
    assert template_annotations(stored)[RESTART_ANNOTATION] == "r0"
    fresh["status"] = outcome.status
    await reconcile(client, fresh, state, config, events, LOG, apply=True, now=2)
    assert posted == []
