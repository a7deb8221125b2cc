"""Pure computation of a DataRecorder's status: conditions, replicas, selector and lag.

Owns the condition types (Ready, Progressing, Degraded), their reasons and transition times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from datarecorder_operator import sinks
from datarecorder_operator.lag import LagReport
from datarecorder_operator.spec import RESTART_ANNOTATION

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"
NOT_OWNED = "ChildNotOwned"
LAG_AVAILABLE, LAG_UNAVAILABLE = "LagAvailable", "LagUnavailable"
PAUSED = "ReconciliationPaused"
CUSTOM_METRICS = "CustomMetricsAvailable"
CUSTOM_METRICS_API = "custom.metrics.k8s.io/v1beta1"
CUSTOM_METRICS_MISSING = (
    f"the HPA reads the recorders' lag from {CUSTOM_METRICS_API}, which this cluster does not "
    "serve (no APIService, or its backend is down): the HPA cannot scale. Install an adapter "
    "(prometheus-adapter, see the README's Autoscaling section) or use autoscaling.mode operator"
)


def foreign_message(foreign: Sequence[str]) -> str:
    """Why the operator leaves objects alone (also the text of its Warning event)."""
    return (
        f"{', '.join(foreign)} already exist(s) and is not owned by this DataRecorder: left "
        "alone; delete or rename it, or rename the DataRecorder"
    )


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the operator saw in one reconcile pass."""

    generation: int | None
    deployment: Mapping[str, Any] | None = None
    selector: str | None = None
    config_hash: str | None = None
    error: str | None = None  # a readable message when something is wrong
    error_reason: str | None = None  # InvalidSpec, ReconcileFailed, ...
    lag: LagReport | None = None
    lag_time: str | None = None
    lag_error: str | None = None
    last_scale_time: str | None = None
    foreign: tuple[str, ...] = ()  # children's names taken by objects this resource does not own
    lag_available: bool | None = None  # None: lag is not read for this resource
    paused: bool = False  # annotation datarecorder.dev/paused: nothing reconciled meanwhile
    custom_metrics_served: bool | None = None  # None: not in hpa mode (or not asked yet)
    state: str | None = None  # spec.state as this pass applied it (None: not known)
    # The reset-to-time annotation (datarecorder_operator.reset): whether this pass knows
    # (else status.reset / lastReset keep their values), the reset in progress, and the one
    # that finished in this pass.
    reset_known: bool = False
    reset: Mapping[str, Any] | None = None
    last_reset: Mapping[str, Any] | None = None


def _condition(ctype: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


def _deployment_conditions(deployment: Mapping[str, Any]) -> tuple[bool, bool, str, str]:
    """(ready, progressing, reason, message) of a Deployment as its controller reported it."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    generation = (deployment.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False, True, "RollingOut", "the Deployment's controller has not seen its spec yet"
    rolled = updated >= want and total == want
    if want == 0:
        return total == 0, total != 0, "ScaledToZero", "no recorder replicas are requested"
    if ready >= want and rolled:
        return True, False, "RecordersReady", f"{ready}/{want} recorders ready"
    if not rolled:
        return False, True, "RollingOut", f"{updated}/{want} recorders updated, {ready} ready"
    return False, False, "RecordersNotReady", f"{ready}/{want} recorders ready"


STOPPED_MESSAGE = (
    "spec.state is stopped: the recorders are scaled to 0 and autoscaling is suspended; "
    "spec.state: running brings them back"
)


def _stopped_conditions(deployment: Mapping[str, Any]) -> tuple[bool, bool, str, str]:
    """(ready, progressing, reason, message) of a stopped recorder: Ready once its last pod
    is gone (stopped as asked is the declared state, not an outage: no NotReady alert)."""
    left = int((deployment.get("status") or {}).get("replicas") or 0)
    if left:
        return False, True, "Stopping", f"{left} recorder pods still running; {STOPPED_MESSAGE}"
    return True, False, "Stopped", STOPPED_MESSAGE


PAUSED_MESSAGE = (
    "spec.state is paused: the recorder pods keep their partitions and fetch nothing (PAUSED); "
    "autoscaling is suspended; spec.state: running resumes"
)


def _paused_conditions(deployment: Mapping[str, Any]) -> tuple[bool, bool, str, str]:
    """(ready, progressing, reason, message) of a paused recorder: never Ready (it records
    nothing), Progressing while the pods are replaced by paused ones."""
    _, progressing, _, message = _deployment_conditions(deployment)
    return False, progressing, "Paused", f"{PAUSED_MESSAGE} ({message})"


def _deployment_failure(deployment: Mapping[str, Any]) -> str | None:
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "rollout failed")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return str(cond.get("message") or cond.get("reason") or "replica failure")
    return None


def conditions_for(obs: Observation) -> list[dict[str, Any]]:
    """Ready / Progressing / Degraded (and LagAvailable where lag is read), without times."""
    if obs.paused:
        message = (
            "annotation datarecorder.dev/paused is true: children and replicas are left as they are"
        )
        return [_condition(PAUSED, True, "Paused", message)]
    conditions = _main_conditions(obs)
    if obs.lag_available is not None and obs.error is None:
        if obs.lag_available:
            conditions.append(_condition(LAG_AVAILABLE, True, "LagRead", "lag read from Kafka"))
        else:
            message = obs.lag_error or "the lag cannot be read from Kafka"
            conditions.append(_condition(LAG_AVAILABLE, False, "LagReadFailed", message))
    if obs.custom_metrics_served is not None and obs.error is None:
        if obs.custom_metrics_served:
            message = f"{CUSTOM_METRICS_API} is served"
            conditions.append(_condition(CUSTOM_METRICS, True, "APIServed", message))
        else:
            conditions.append(
                _condition(CUSTOM_METRICS, False, "APINotServed", CUSTOM_METRICS_MISSING)
            )
    return conditions


def _main_conditions(obs: Observation) -> list[dict[str, Any]]:
    if obs.error is not None:
        reason = obs.error_reason or "ReconcileFailed"
        return [
            _condition(READY, False, reason, obs.error),
            _condition(PROGRESSING, False, reason, "reconciliation is blocked"),
            _condition(DEGRADED, True, reason, obs.error),
        ]
    if obs.deployment is None and obs.foreign:
        return [
            _condition(READY, False, NOT_OWNED, foreign_message(obs.foreign)),
            _condition(PROGRESSING, False, NOT_OWNED, "reconciliation is blocked"),
            _condition(DEGRADED, True, NOT_OWNED, foreign_message(obs.foreign)),
        ]
    if obs.deployment is None:
        return [
            _condition(READY, False, "Creating", "the recorder Deployment does not exist yet"),
            _condition(PROGRESSING, True, "Creating", "creating the recorder Deployment"),
            _condition(DEGRADED, False, "AsExpected", "no problems found"),
        ]
    ready, progressing, reason, message = _deployment_conditions(obs.deployment)
    moving = "RollingOut" if progressing else "Complete"
    if obs.reset is not None:
        ready, progressing, reason = False, True, "ResettingProgress"
        message = (
            f"moving every topic's progress to {obs.reset.get('time')} "
            f"({obs.reset.get('phase')}: recorders stopped, then Job {obs.reset.get('job')}); "
            "the previous state is restored after it"
        )
        moving = reason
    elif obs.state == "stopped":
        ready, progressing, reason, message = _stopped_conditions(obs.deployment)
        moving = reason  # Stopping, then Stopped
    elif obs.state == "paused":
        ready, progressing, reason, message = _paused_conditions(obs.deployment)
        moving = "RollingOut" if progressing else reason  # the pods replaced, then Paused
    failure = _deployment_failure(obs.deployment)
    if obs.foreign:
        return [
            _condition(READY, ready, reason, message),
            _condition(PROGRESSING, progressing, moving, message),
            _condition(DEGRADED, True, NOT_OWNED, foreign_message(obs.foreign)),
        ]
    return [
        _condition(READY, ready, reason, message),
        _condition(PROGRESSING, progressing, moving, message),
        _condition(DEGRADED, True, "DeploymentFailed", failure)
        if failure
        else _condition(DEGRADED, False, "AsExpected", "no problems found"),
    ]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Sequence[Mapping[str, Any]],
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Keep a condition's lastTransitionTime while its status does not change."""
    before = {c.get("type"): c for c in previous or []}
    merged: list[dict[str, Any]] = []
    for cond in current:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"]
        entry = dict(cond)
        entry["lastTransitionTime"] = (old or {}).get("lastTransitionTime", now) if same else now
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    return merged


def compute_status(
    obs: Observation, previous: Mapping[str, Any] | None, *, now: str
) -> dict[str, Any]:
    """The full `status` the operator wants; fields it cannot know keep their old values."""
    previous = previous or {}
    status: dict[str, Any] = {}
    if obs.generation is not None:
        status["observedGeneration"] = obs.generation
    deployment = obs.deployment
    if deployment is not None:
        dstatus = deployment.get("status") or {}
        status["replicas"] = int(dstatus.get("replicas") or 0)
        status["readyReplicas"] = int(dstatus.get("readyReplicas") or 0)
        status["desiredReplicas"] = int((deployment.get("spec") or {}).get("replicas", 1))
    else:
        status["replicas"] = int(previous.get("replicas") or 0)
        status["readyReplicas"] = int(previous.get("readyReplicas") or 0)
    for key, value in (("selector", obs.selector), ("configHash", obs.config_hash)):
        if value is not None:
            status[key] = value
        elif key in previous:
            status[key] = previous[key]
    if obs.lag is not None:
        # The group's committed lag, under the hot path's name whichever sink the offsets follow:
        # the CRD's printer column reads `.status.lag.timescaledb`.
        status["lag"] = {sinks.TIMESCALEDB: obs.lag.total}
        status["partitions"] = obs.lag.partitions
        # When the lag last changed: a steady lag then costs no status write (and no watch
        # event to every client) per poll; LagAvailable says whether reads still work.
        unchanged = previous.get("lag") == status["lag"] and (
            previous.get("partitions") == status["partitions"]
        )
        status["lagObservedTime"] = (
            previous.get("lagObservedTime", obs.lag_time) if unchanged else obs.lag_time
        )
        status["lagError"] = None  # a merge patch removes the stale error
    else:
        for key in ("lag", "partitions", "lagObservedTime"):
            if key in previous:
                status[key] = previous[key]
        if obs.lag_error is not None:
            status["lagError"] = obs.lag_error
    if obs.state is not None:
        status["state"] = obs.state
    elif "state" in previous:
        status["state"] = previous["state"]
    restart = last_restart(previous.get("lastRestart"), deployment, now=now)
    if restart is not None:
        status["lastRestart"] = restart
    if obs.reset_known:
        status["reset"] = dict(obs.reset) if obs.reset is not None else None  # None removes
    elif previous.get("reset") is not None:
        status["reset"] = previous["reset"]
    if obs.last_reset is not None:
        status["lastReset"] = dict(obs.last_reset)
    elif "lastReset" in previous:
        status["lastReset"] = previous["lastReset"]
    if obs.last_scale_time is not None:
        status["lastScaleTime"] = obs.last_scale_time
    elif "lastScaleTime" in previous:
        status["lastScaleTime"] = previous["lastScaleTime"]
    status["conditions"] = merge_conditions(
        previous.get("conditions"), conditions_for(obs), now=now, generation=obs.generation
    )
    return status


def template_restart(deployment: Mapping[str, Any] | None) -> str | None:
    """The restart value the Deployment's pod template carries (what the pods were rolled
    for), None when it carries none."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    value = ((template.get("metadata") or {}).get("annotations") or {}).get(RESTART_ANNOTATION)
    return None if value is None else str(value)


def last_restart(
    previous: Mapping[str, Any] | None, deployment: Mapping[str, Any] | None, *, now: str
) -> dict[str, Any] | None:
    """`status.lastRestart`: the restart value the pods were last rolled for and when the
    operator first saw it on the Deployment. Kept as it was while the value is the same, so
    a restarted operator (or a removed annotation) records nothing new."""
    value = template_restart(deployment)
    if value is None or (previous is not None and previous.get("value") == value):
        return dict(previous) if previous is not None else None
    return {"value": value, "time": now}


def status_changed(previous: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    """Whether patching `wanted` would change anything (avoids a write, and a watch event)."""
    previous = previous or {}
    for key, value in wanted.items():
        if value is None:
            if key in previous:
                return True
        elif previous.get(key) != value:
            return True
    return False
