"""One reconcile pass over one DataRecorder, as a typed function of its inputs.

Owns what a pass does: apply the rendered children (server-side apply, never taking over an
object the resource does not own), read the group's lag, scale in mode `operator`, and
compute the status to write. The kopf handlers and the resync loop in `handlers` both call
`reconcile`; it reads and writes Kubernetes only through `kube.KubeClient`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from datarecorder_operator import (
    drift,
    environment,
    jaas,
    kafkalag,
    kube,
    metrics,
    migration,
    naming,
    rendering,
    replicas,
    reset,
    status,
    workload,
)
from datarecorder_operator.lag import (
    Committed,
    LagReport,
    committed_offsets,
    compute_lag,
    desired_replicas,
    excluding,
    persistent_partitions,
    with_activation,
)
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import (
    RESTRICTED,
    SECRET_MARK_ANNOTATION,
    Policy,
    secret_marked_for,
)
from datarecorder_operator.scaler import Stabilizer
from datarecorder_operator.spec import (
    API_VERSION,
    KIND,
    RESTART_ANNOTATION,
    RecorderSpec,
    SpecError,
    is_paused,
)

# Posts one Event on the DataRecorder: (type, reason, message).
Events = Callable[[str, str, str], Awaitable[None]]

# Children that exist only for some specs; the others always exist.
OPTIONAL_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)
ALWAYS_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
)


UNMARKED = "SecretNotMarked"  # the status reason when the pods would read unmarked Secrets


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide timing; tests shorten it, production keeps the defaults."""

    tick_seconds: float = 5.0
    resync_seconds: float = 30.0
    kafka_timeout_seconds: float = 20.0
    read_lag: bool = True  # also read lag for status when autoscaling is not in operator mode
    metrics_port: int = 0  # serve the operator's /metrics on this port (0: off)
    # Watch the recorders' Deployments (off: a GET per tick, as before; kept for the bench).
    watch_deployments: bool = True
    # What a DataRecorder may ask of its pods (`--policy`, the chart's `policy` value).
    policy: Policy = RESTRICTED


@dataclasses.dataclass
class ObjectState:
    """Per-resource memory between timer ticks (lost on restart, which is safe)."""

    last_resync: float = float("-inf")
    last_lag_poll: float = float("-inf")
    lag: LagReport | None = None
    lag_time: str | None = None
    lag_error: str | None = None
    stabilizer: Stabilizer | None = None
    last_scale_time: str | None = None
    foreign: tuple[str, ...] = ()
    lag_failures: int = 0  # lag reads in a row that failed (KEDA's fallback counts them)
    lag_reader: kafkalag.LagReader = dataclasses.field(default_factory=kafkalag.LagReader)
    # The Deployment as the watch last showed it (`handlers.deployment_seen`): a pass reads it
    # from here instead of a GET per tick. `deployment_watched` is False until the watch has
    # reported on it (absent included), and a pass then GETs it.
    deployment_watched: bool = False
    custom_metrics_served: bool | None = None  # mode hpa: asked on every apply pass
    committed: Committed | None = None  # the previous poll's committed offsets
    persistent: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    watched_deployment: dict[str, Any] | None = None
    # No old-name child (see `migration`) is left: later passes stop looking for them. After a
    # restart one pass looks again.
    legacy_retired: bool = False
    # Restricted policy: why the pods may not be rendered (Secrets not marked for this
    # DataRecorder), found on the last apply pass; the passes between keep reporting it.
    unmarked: str | None = None
    # What the last pass found: spec.state, or "reconcile_paused" / "invalid" (the operator's
    # gauge of recorders by state); None before the first pass.
    phase: str | None = None
    restart_noted: str | None = None  # the restart value an event was posted for


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def child_names(name: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child the resource `name` may have, old names
    included (for deletion without a spec)."""
    names = [(v, k, naming.child_name(name, k)) for v, k in (*ALWAYS_KINDS, *OPTIONAL_KINDS)]
    legacy = migration.LEGACY_KINDS
    return names + [(v, k, naming.child_name(name, k, legacy=True)) for v, k in legacy]


async def _legacy_children(
    client: kube.KubeClient, spec: RecorderSpec, uid: str | None, monitor_served: bool
) -> dict[str, dict[str, Any]]:
    """The old-name children this resource owns, by kind (someone else's are never listed)."""
    found: dict[str, dict[str, Any]] = {}
    for api_version, kind in migration.LEGACY_KINDS:
        if kind == "ServiceMonitor" and not monitor_served:
            continue
        name = naming.child_name(spec.name, kind, legacy=True)
        existing = await client.get(api_version, kind, spec.namespace, name)
        if existing is not None and _owned_by(existing, uid):
            found[kind] = existing
    return found


async def _retire(
    client: kube.KubeClient, spec: RecorderSpec, legacy: Mapping[str, Any], logger: kopf.Logger
) -> None:
    kind, name = legacy["kind"], legacy["metadata"]["name"]
    await client.delete(legacy["apiVersion"], kind, spec.namespace, name)
    logger.info(f"deleted {kind} {name}: replaced by {kind} {naming.child_name(spec.name, kind)}")


@dataclasses.dataclass
class ApplyResult:
    """What one pass over the children found: the Deployment, and children it left alone."""

    deployment: dict[str, Any] | None
    foreign: list[str] = dataclasses.field(default_factory=list)  # "Kind name" not ours
    # The restart value the existing Deployment's pods were rolled for by this pass (None: no
    # roll for a restart; a new Deployment is not a restart).
    restarted: str | None = None


async def apply_children(
    client: kube.KubeClient,
    body: Mapping[str, Any],
    spec: RecorderSpec,
    logger: kopf.Logger,
    partitions: int | None = None,
    state: ObjectState | None = None,
) -> ApplyResult:
    """Apply every rendered child that is missing or differs, remove unwanted ones.

    An object with a child's name that this DataRecorder does not own (someone else's, or a
    leftover of a deleted resource with the same name) is never taken over: it is reported in
    `foreign` and the caller makes that visible.

    Children of the old naming (`migration`) that this resource owns are retired: the PDB and
    HPA as their replacements are applied, the rest once the new Deployment is available.
    """
    meta = body["metadata"]
    uid = meta.get("uid")
    # Asked every pass: the Prometheus Operator may be installed (or removed) at any time.
    monitor_served = await client.serves("monitoring.coreos.com/v1", "servicemonitors")
    # The watch only shows Deployments this resource owns: when it shows none, GET by name,
    # so that someone else's Deployment of that name is seen (and left alone) before applying.
    deployment = state.watched_deployment if state is not None else None
    if deployment is None:
        deployment = await client.get(
            "apps/v1", "Deployment", spec.namespace, naming.child_name(spec.name, "Deployment")
        )
    legacy: dict[str, dict[str, Any]] = {}
    if state is None or not state.legacy_retired:
        legacy = await _legacy_children(client, spec, uid, monitor_served)
    current_replicas, elsewhere = None, False
    if deployment is not None and spec.autoscaling.enabled:
        current_replicas = (deployment.get("spec") or {}).get("replicas")
        elsewhere = not replicas.applies_replicas(deployment, kube.FIELD_MANAGER)
    elif "Deployment" in legacy and spec.autoscaling.enabled:
        # The new Deployment starts where the autoscaler had the old one, not at minReplicas.
        current_replicas = (legacy["Deployment"].get("spec") or {}).get("replicas")
    desired = rendering.render_children(
        spec,
        service_monitor_available=monitor_served,
        current_replicas=current_replicas,
        partitions=partitions,
        replicas_owned_elsewhere=elsewhere,
        before_stop=replicas.replicas_before_stop(deployment),
        restart=workload.restart_value(meta.get("annotations"), deployment),
    )
    kopf.append_owner_reference(desired, owner=body)  # type: ignore[arg-type]
    result = ApplyResult(deployment=None)
    wanted = {(m["apiVersion"], m["kind"]) for m in desired}
    for manifest in map(drift.stamped, desired):
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        name = manifest["metadata"]["name"]
        actual = deployment if kind == "Deployment" else None
        if actual is None:
            actual = await client.get(api_version, kind, spec.namespace, name)
        if actual is not None and not _owned_by(actual, uid):
            result.foreign.append(f"{kind} {name}")
            continue
        if kind in migration.RETIRED_BEFORE_APPLY and kind in legacy:
            await _retire(client, spec, legacy.pop(kind), logger)
        if drift.needs_apply(manifest, actual):
            stale = drift.stale_config_keys(manifest, actual or {})
            actual = await client.apply(manifest)
            metrics.APPLIES.labels(kind).inc()
            if stale:
                drop = {"data": dict.fromkeys(stale)}  # a merge patch deletes null keys
                actual = await client.patch(api_version, kind, spec.namespace, name, drop) or actual
            logger.info(f"applied {kind} {name} (created, spec change or drift)")
        if kind == "Deployment":
            result.deployment = actual
            asked = status.template_restart(actual)
            if deployment is not None and asked != status.template_restart(deployment):
                result.restarted = asked
    for api_version, kind in OPTIONAL_KINDS:
        if (api_version, kind) in wanted:
            continue
        if kind == "ServiceMonitor" and not monitor_served:
            continue
        name = naming.child_name(spec.name, kind)
        existing = await client.get(api_version, kind, spec.namespace, name)
        if existing is not None and _owned_by(existing, uid):
            await client.delete(api_version, kind, spec.namespace, name)
            logger.info(f"deleted {kind} {name}: the spec no longer asks for it")
    if legacy and migration.available(result.deployment):
        for _, kind in migration.LEGACY_KINDS:
            if kind in legacy:
                await _retire(client, spec, legacy.pop(kind), logger)
    if state is not None:
        state.legacy_retired = not legacy
    return result


class CredentialsUnavailable(Exception):
    """The operator may not (or cannot) read the Kafka credentials a spec names. One message
    for every cause: a tenant must not learn from the status whether a Secret or key exists."""

    def __init__(self, recorder: str) -> None:
        super().__init__(
            "the Kafka credentials in spec.kafka are not readable by the operator: a Secret "
            "they name is missing, lacks the key, or is not marked for this DataRecorder "
            f"(annotation {SECRET_MARK_ANNOTATION} listing {recorder!r})"
        )


async def _kafka_access(client: kube.KubeClient, spec: RecorderSpec) -> kafkalag.KafkaAccess:
    """Broker address and, for secured clusters, credentials from the referenced Secrets —
    only from Secrets marked for this DataRecorder, and never a password in clear text unless
    the spec allows it."""

    async def secret_value(name: str, key: str) -> str:
        secret = await client.get("v1", "Secret", spec.namespace, name)
        data = (secret or {}).get("data") or {}
        if not secret_marked_for(secret, spec.name) or key not in data:
            raise CredentialsUnavailable(spec.name)
        return base64.b64decode(data[key]).decode()

    access = kafkalag.KafkaAccess(
        brokers=spec.kafka.brokers, security_protocol=spec.kafka.security_protocol
    )
    if spec.kafka.sasl is not None:
        sasl = spec.kafka.sasl
        if (
            sasl.mechanism == "PLAIN"
            and spec.kafka.security_protocol == "SASL_PLAINTEXT"
            and not sasl.allow_plaintext_password
        ):  # parse_spec refuses it too; the one place a password leaves, checked here again
            raise SpecError("refusing to send a SASL PLAIN password over SASL_PLAINTEXT")
        if sasl.jaas_config is not None:
            line = await secret_value(sasl.jaas_config.name, sasl.jaas_config.key)
            try:
                user, password = jaas.credentials(line)
            except ValueError as exc:
                where = (
                    f"Secret {spec.namespace}/{sasl.jaas_config.name} key {sasl.jaas_config.key}"
                )
                raise SpecError(f"{where}: {exc}") from None
        else:
            username = sasl.username
            user = (
                username
                if isinstance(username, str)
                else await secret_value(username.name, username.key)
            )
            password = await secret_value(sasl.password.name, sasl.password.key)
        access = dataclasses.replace(
            access, sasl_mechanism=sasl.mechanism, sasl_username=user, sasl_password=password
        )
    tls = spec.kafka.tls
    if tls is not None:
        # The same trust and client certificate as the recorders: on an mTLS listener the
        # operator's lag reads are refused without the certificate.
        access = dataclasses.replace(access, ca_pem=await secret_value(tls.ca.name, tls.ca.key))
        if tls.cert is not None and tls.key is not None:
            access = dataclasses.replace(
                access,
                cert_pem=await secret_value(tls.cert.name, tls.cert.key),
                key_pem=await secret_value(tls.key.name, tls.key.key),
            )
    return access


async def unmarked_secrets(client: kube.KubeClient, spec: RecorderSpec) -> str | None:
    """Restricted policy: the Secrets the recorder pods would read that are missing or not
    marked for this DataRecorder, as the status message; None when every one is marked."""
    deployment = workload.render_deployment(spec, None)
    unmarked = [
        name
        for name in workload.referenced_secrets(deployment)
        if not secret_marked_for(await client.get("v1", "Secret", spec.namespace, name), spec.name)
    ]
    if not unmarked:
        return None
    # Missing and unmarked read the same: the status tells nobody which Secrets exist.
    return (
        f"Secrets {', '.join(unmarked)} are missing or not marked for this DataRecorder: the "
        f"recorder pods may read only Secrets annotated {SECRET_MARK_ANNOTATION} listing "
        f"{spec.name!r} (or '*')"
    )


async def poll_lag(
    client: kube.KubeClient, spec: RecorderSpec, state: ObjectState, config: OperatorConfig
) -> None:
    try:
        access = await _kafka_access(client, spec)
        offsets = await state.lag_reader.read(
            access, spec.kafka.group_id, spec.kafka.topics, within=config.kafka_timeout_seconds
        )
    except Exception as exc:  # any Kafka failure only makes the lag unknown for a while
        # The credentials' message is whole (it says what to annotate); others are cut short.
        detail = str(exc) if isinstance(exc, CredentialsUnavailable) else repr(exc)[:270]
        state.lag, state.lag_error = None, f"cannot read lag from Kafka: {detail}"
        state.lag_failures += 1
        metrics.LAG_READS.labels("error").inc()
        return
    state.lag = compute_lag(offsets, spec.autoscaling.offset_reset_policy)
    committed = committed_offsets(offsets)
    state.persistent = persistent_partitions(state.lag, committed, state.committed)
    state.committed = committed
    state.lag_time, state.lag_error, state.lag_failures = _now_iso(), None, 0
    metrics.LAG_READS.labels("ok").inc()


async def scale(
    client: kube.KubeClient,
    events: Events,
    spec: RecorderSpec,
    state: ObjectState,
    deployment: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Operator mode: move the Deployment's replicas towards what the lag asks for; while the
    lag cannot be read, keep them, or after `fallback.failureThreshold` failed reads in a row
    run `fallback.replicas` (as KEDA does)."""
    auto = spec.autoscaling
    current = int((deployment.get("spec") or {}).get("replicas", 1))
    if state.lag is None:
        fallback = fallback_replicas(spec, state.lag_failures)
        if fallback is None or fallback == current:
            return deployment
        target, reason, detail = fallback, "fallback", f"{state.lag_failures} lag reads failed"
    else:
        window, step = auto.scale_down_stabilization_seconds, auto.scale_down_step
        if state.stabilizer is None or (state.stabilizer.window_seconds, state.stabilizer.step) != (
            window,
            step,
        ):
            state.stabilizer = Stabilizer(window, step)
        # Persistent lag (KEDA's excludePersistentLag) does not ask for replicas, but still
        # counts for activation: a stuck partition keeps the recorders from idling, as in KEDA.
        scaling_lag = (
            excluding(state.lag, state.persistent) if auto.exclude_persistent_lag else state.lag
        )
        wanted = desired_replicas(
            scaling_lag,
            target_lag_per_replica=auto.target_lag_per_replica,
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            limit_to_partitions_with_lag=auto.limit_to_partitions_with_lag,
        )
        wanted = with_activation(
            wanted,
            state.lag,
            activation_lag=auto.activation_lag_threshold,
            idle_replicas=auto.idle_replicas,
        )
        decision = state.stabilizer.decide(now, wanted, current)
        if decision.replicas == current:
            return deployment
        target, reason = decision.replicas, decision.reason
        detail = f"lag {state.lag.total} on {state.lag.partitions} partitions"
    patched = await client.patch(
        "apps/v1",
        "Deployment",
        spec.namespace,
        naming.child_name(spec.name, "Deployment"),
        {"spec": {"replicas": target}},
    )
    state.last_scale_time = _now_iso()
    metrics.SCALE_DECISIONS.labels("up" if target > current else "down", reason).inc()
    kind = "Warning" if reason == "fallback" else "Normal"
    await events(kind, "Scaled", f"{reason}: {current} -> {target} replicas ({detail})")
    return patched or deployment


def fallback_replicas(spec: RecorderSpec, failures: int) -> int | None:
    """Pure: the replicas KEDA-style fallback asks for after `failures` failed reads, if any."""
    fallback = spec.autoscaling.fallback
    if fallback is None or failures < fallback.failure_threshold:
        return None
    return min(fallback.replicas, spec.autoscaling.max_replicas)


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
        now=_now_iso(),
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
    wanted = status.compute_status(obs, previous, now=_now_iso())
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


async def delete_children(
    client: kube.KubeClient, meta: Mapping[str, Any], logger: kopf.Logger
) -> None:
    """Delete the children a deleted DataRecorder owned (the garbage collector does the same on
    a real cluster; this covers API servers without one, such as the tests' emulator)."""
    namespace, uid = meta["namespace"], meta.get("uid")
    monitor_served = await client.serves("monitoring.coreos.com/v1", "servicemonitors")
    for api_version, kind, name in child_names(meta["name"]):
        if kind == "ServiceMonitor" and not monitor_served:
            continue
        existing = await client.get(api_version, kind, namespace, name)
        if existing is not None and _owned_by(existing, uid):
            await client.delete(api_version, kind, namespace, name)
            logger.info(f"deleted {kind} {name} with its DataRecorder")
