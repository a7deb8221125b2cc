"""One reconcile pass over one DataRecorder, as a typed function of its inputs.

Owns the order of a pass and its outcome: parse the spec, the reset verb's step, apply the
children (`children`), read lag and scale in mode `operator` (`autoscaling`), and compute the
status to write. The kopf handlers and the resync loop in `handlers` both call `reconcile`; it
reads and writes Kubernetes only through `kube.KubeClient`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import kopf

from datarecorder_operator import (
    environment,
    kube,
    metrics,
    naming,
    reset,
    status,
)
from datarecorder_operator.autoscaling import poll_lag, scale
from datarecorder_operator.children import ApplyResult, apply_children, unmarked_secrets
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import (
    API_VERSION,
    KIND,
    RESTART_ANNOTATION,
    RecorderSpec,
    SpecError,
    is_paused,
)
from datarecorder_operator.state import Events, ObjectState, OperatorConfig, now_iso

UNMARKED = "SecretNotMarked"  # the status reason when the pods would read unmarked Secrets


def _observation(
    meta: Mapping[str, Any],
    spec: RecorderSpec,
    deployment: dict[str, Any] | None,
    state: ObjectState,
) -> status.Observation:
    return status.Observation(
        generation=meta.get("generation"),
        deployment=deployment,
        selector=naming.selector_string(spec),
        config_hash=environment.config_hash(spec),
        lag=state.lag,
        lag_time=state.lag_time,
        lag_error=state.lag_error,
        last_scale_time=state.last_scale_time,
        foreign=state.foreign,
        lag_available=None if state.last_lag_poll == float("-inf") else state.lag is not None,
        custom_metrics_served=state.custom_metrics_served if spec.hpa_scaled else None,
        state=spec.state,
    )


def _reset_pods(spec: RecorderSpec) -> dict[str, str]:
    return naming.selector_labels(spec)


async def reset_pass(
    client: kube.KubeClient,
    body: Mapping[str, Any],
    spec: RecorderSpec,
    events: Events,
    logger: kopf.Logger,
) -> reset.ResetStep:
    """The reset-to-time annotation's step for this pass (`reset.next_step`) and its I/O: the
    recorder pods and the Job read, the Job created, the annotation removed."""
    meta, previous = body["metadata"], body.get("status") or {}
    asked = (meta.get("annotations") or {}).get(reset.RESET_ANNOTATION)
    current, last = previous.get("reset"), previous.get("lastReset")
    if asked is None and current is None:
        return reset.ResetStep()
    pods, job = 0, None
    if current is not None:
        found = await client.get("batch/v1", "Job", spec.namespace, str(current["job"]))
        job = reset.job_state(found)
        if job is None:
            pods = len(await client.list_names("v1", "Pod", spec.namespace, _reset_pods(spec)))
    step = reset.next_step(
        None if asked is None else str(asked),
        current,
        last,
        recorder=spec.name,
        pods=pods,
        job=job,
        now=now_iso(),
    )
    if step.create_job and step.in_progress is not None:
        progress = step.in_progress
        manifest = reset.render_reset_job(spec, str(progress["time"]), str(progress["job"]))
        kopf.append_owner_reference(manifest, owner=body)  # type: ignore[arg-type]
        try:
            await client.create(manifest)
        except kube.KubeError as exc:
            if exc.status != 409:  # 409: created by a pass whose status write was lost
                raise
        logger.info(f"created Job {progress['job']}: reset-progress --to-time {progress['time']}")
    if step.event is not None:
        await events(*step.event)
    if step.remove_annotation is not None:
        drop = {"metadata": {"annotations": {reset.RESET_ANNOTATION: None}}}
        await client.patch(API_VERSION, KIND, spec.namespace, spec.name, drop)
    return step


def _paused(meta: Mapping[str, Any], spec: RecorderSpec) -> status.Observation:
    return status.Observation(
        generation=meta.get("generation"),
        selector=naming.selector_string(spec),
        paused=True,
    )


def _error(meta: Mapping[str, Any], message: str, reason: str) -> status.Observation:
    return status.Observation(generation=meta.get("generation"), error=message, error_reason=reason)


async def _note_foreign(events: Events, state: ObjectState, applied: ApplyResult) -> None:
    """Remember the children left alone; a Warning event each time that set changes."""
    foreign = tuple(applied.foreign)
    if foreign and foreign != state.foreign:
        await events("Warning", status.NOT_OWNED, status.foreign_message(foreign))
    state.foreign = foreign


async def _note_restart(events: Events, state: ObjectState, applied: ApplyResult) -> None:
    """A Normal event `Restarted` when this pass rolled the pods for a new restart value (once
    per value and process: a stale watch may show the old template to the next pass)."""
    value = applied.restarted
    if value is not None and value != state.restart_noted:
        state.restart_noted = value
        message = f"rolling the recorder pods for {RESTART_ANNOTATION}={value!r}"
        await events("Normal", "Restarted", message)


async def _note_custom_metrics(client: kube.KubeClient, events: Events, state: ObjectState) -> None:
    """Mode hpa: whether the custom metrics API the HPA reads is served; a Warning event when
    it stops being (or is not at the first pass)."""
    served = await client.api_available(status.CUSTOM_METRICS_API)
    if not served and state.custom_metrics_served is not False:
        await events("Warning", "CustomMetricsAPINotServed", status.CUSTOM_METRICS_MISSING)
    state.custom_metrics_served = served


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a pass wants written: the status (None: unchanged) and what stopped it, if any."""

    status: dict[str, Any] | None
    error: SpecError | kube.KubeError | None = None

    @property
    def result(self) -> str:
        """The `result` label of the reconcile counter."""
        if isinstance(self.error, SpecError):
            return "invalid_spec"
        return "ok" if self.error is None else "api_error"


async def measured(trigger: str, pass_: Awaitable[Outcome]) -> Outcome:
    """Run one pass, counting it and timing it in the operator's metrics."""
    started = time.monotonic()
    outcome = await pass_
    metrics.RECONCILE_SECONDS.labels(trigger).observe(time.monotonic() - started)
    metrics.RECONCILES.labels(trigger, outcome.result).inc()
    return outcome


def _status_patch(
    previous: Mapping[str, Any] | None, obs: status.Observation
) -> dict[str, Any] | None:
    wanted = status.compute_status(obs, previous, now=now_iso())
    return wanted if status.status_changed(previous, wanted) else None


async def reconcile(
    client: kube.KubeClient,
    body: Mapping[str, Any],
    state: ObjectState,
    config: OperatorConfig,
    events: Events,
    logger: kopf.Logger,
    *,
    apply: bool,
    now: float | None = None,
) -> Outcome:
    """One pass over the DataRecorder `body`.

    `apply`: apply the children (on create, update and resume, and every `resync_seconds`);
    otherwise only read the Deployment. Then lag (every `pollIntervalSeconds`), scaling in
    mode `operator`, and the status. An invalid spec or a refused API call ends the pass
    early with a Degraded status and the error in the outcome.
    """
    now = time.monotonic() if now is None else now
    meta, previous = body["metadata"], body.get("status")
    try:
        rspec = parse_spec(
            meta["name"], meta["namespace"], dict(body.get("spec") or {}), config.policy
        )
    except SpecError as exc:
        state.phase = "invalid"
        return Outcome(_status_patch(previous, _error(meta, str(exc), "InvalidSpec")), exc)
    try:
        if is_paused(meta.get("annotations")):
            # Strimzi's pause: children and replicas stay as they are until it is removed.
            state.phase = "reconcile_paused"
            return Outcome(_status_patch(previous, _paused(meta, rspec)))
        step = await reset_pass(client, body, rspec, events, logger)
        if step.event is not None:
            apply = True  # the reset stops the recorders, or its end restores them
        rspec = reset.reset_spec(rspec, step)
        state.phase = rspec.state
        if apply and config.policy.restricted:
            state.unmarked = await unmarked_secrets(client, rspec)
            if state.unmarked is not None:
                state.last_resync = now  # looked again every resync period, not every tick
        if state.unmarked is not None and config.policy.restricted:
            # Nothing applied: the pods would hand the spec's author Secrets not given to it.
            error = SpecError(state.unmarked)
            return Outcome(_status_patch(previous, _error(meta, state.unmarked, UNMARKED)), error)
        if apply:
            partitions = state.lag.partitions if state.lag is not None else None
            applied = await apply_children(client, body, rspec, logger, partitions, state)
            await _note_foreign(events, state, applied)
            await _note_restart(events, state, applied)
            if rspec.hpa_scaled:
                await _note_custom_metrics(client, events, state)
            deployment = applied.deployment
            state.last_resync = now
        elif f"Deployment {naming.child_name(rspec.name, 'Deployment')}" in state.foreign:
            deployment = None  # not ours: never read or scale someone else's Deployment
        elif state.deployment_watched:
            deployment = state.watched_deployment  # the watch keeps it current: no GET
        else:
            deployment = await client.get(
                "apps/v1",
                "Deployment",
                rspec.namespace,
                naming.child_name(rspec.name, "Deployment"),
            )
        poll_every = rspec.autoscaling.poll_interval_seconds
        if (rspec.operator_scaled or config.read_lag) and now - state.last_lag_poll >= poll_every:
            state.last_lag_poll = now
            await poll_lag(client, rspec, state, config)
            if state.lag_failures == 1:  # once per outage, not per failed read
                await events("Warning", status.LAG_UNAVAILABLE, state.lag_error or "lag unknown")
        if rspec.operator_scaled and deployment is not None:
            deployment = await scale(client, events, rspec, state, deployment, now)
    except kube.KubeError as exc:
        return Outcome(_status_patch(previous, _error(meta, str(exc), "ReconcileFailed")), exc)
    observed = dataclasses.replace(
        _observation(meta, rspec, deployment, state),
        reset_known=True,
        reset=step.in_progress,
        last_reset=step.finished,
    )
    return Outcome(_status_patch(previous, observed))
