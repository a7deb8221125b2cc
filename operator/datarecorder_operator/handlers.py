"""The kopf handlers: thin shells that parse, render, apply children and write status.

Owns the operator's registry (`build_registry`), its settings and per-resource state (the
scale-down stabilizer, timestamps of the last resync and lag poll).

Handlers and what they do:

* create / update / resume: apply every rendered child (create, or merge-patch if drifted),
  delete children the spec no longer wants, write status. An invalid spec writes a
  `Degraded` condition and raises `kopf.PermanentError` (no retry loop until the spec changes).
* timer (every `tick_seconds`): re-applies the children every `resync_seconds` (a child edited
  or deleted by hand is restored), reads the group's lag from Kafka every
  `spec.autoscaling.pollIntervalSeconds`, scales the Deployment in mode `operator`, and
  refreshes status (ready replicas, conditions, lag).
* delete: removes the children explicitly (owner references let the garbage collector do the
  same on a real cluster; doing it here also covers clusters or emulators without one).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from datarecorder_operator import kafkalag, kube, rendering, status
from datarecorder_operator.lag import LagReport, compute_lag, desired_replicas
from datarecorder_operator.scaler import Stabilizer
from datarecorder_operator.spec import GROUP, PLURAL, VERSION, RecorderSpec, SpecError, parse_spec

# Children that exist only for some specs; the others always exist.
OPTIONAL_KINDS: tuple[tuple[str, str], ...] = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
)
ALWAYS_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
)


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide timing; tests shorten it, production keeps the defaults."""

    tick_seconds: float = 5.0
    resync_seconds: float = 30.0
    kafka_timeout_seconds: float = 20.0
    read_lag: bool = True  # also read lag for status when autoscaling is not in operator mode


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


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _client(memo: Any) -> kube.KubeClient:
    client = memo.get("kube")
    if not isinstance(client, kube.KubeClient):
        raise kopf.TemporaryError("the Kubernetes client is not ready yet", delay=1)
    return client


def _state(memo: Any) -> ObjectState:
    state = memo.get("state")
    if not isinstance(state, ObjectState):
        state = memo["state"] = ObjectState()
    return state


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def child_names(name: str) -> dict[tuple[str, str], str]:
    """The name of every child kind of the resource `name` (for deletion without a spec)."""
    names = {kind: name for kind in ALWAYS_KINDS + OPTIONAL_KINDS}
    names[("v1", "ConfigMap")] = f"{name}-config"
    return names


async def apply_children(
    client: kube.KubeClient, body: Mapping[str, Any], spec: RecorderSpec, logger: Any
) -> dict[str, Any] | None:
    """Create or restore every rendered child, remove unwanted ones; return the Deployment."""
    meta = body["metadata"]
    uid = meta.get("uid")
    deployment = await client.get("apps/v1", "Deployment", spec.namespace, spec.name)
    current_replicas = None
    if deployment is not None and spec.autoscaling.enabled:
        current_replicas = (deployment.get("spec") or {}).get("replicas")
    # Asked every pass: the Prometheus Operator may be installed (or removed) at any time.
    monitor_served = await client.serves("monitoring.coreos.com/v1", "servicemonitors")
    desired = rendering.render_children(
        spec, service_monitor_available=monitor_served, current_replicas=current_replicas
    )
    kopf.append_owner_reference(desired, owner=body)  # type: ignore[arg-type]
    wanted = {(m["apiVersion"], m["kind"]) for m in desired}
    for manifest in desired:
        api_version, kind, name = (
            manifest["apiVersion"],
            manifest["kind"],
            manifest["metadata"]["name"],
        )
        actual = deployment if kind == "Deployment" else None
        if actual is None:
            actual = await client.get(api_version, kind, spec.namespace, name)
        if actual is None:
            try:
                actual = await client.create(manifest)
                logger.info(f"created {kind} {name}")
            except kube.KubeError as exc:
                if exc.status != 409:  # created meanwhile by a concurrent pass: patch below
                    raise
                actual = await client.get(api_version, kind, spec.namespace, name) or {}
        patch = rendering.drift_patch(manifest, actual)
        if patch is not None:
            actual = await client.patch(api_version, kind, spec.namespace, name, patch) or actual
            logger.info(f"patched {kind} {name} (spec change or drift)")
        if kind == "Deployment":
            deployment = actual
    for api_version, kind in OPTIONAL_KINDS:
        if (api_version, kind) in wanted:
            continue
        if kind == "ServiceMonitor" and not monitor_served:
            continue
        existing = await client.get(api_version, kind, spec.namespace, spec.name)
        if existing is not None and _owned_by(existing, uid):
            await client.delete(api_version, kind, spec.namespace, spec.name)
            logger.info(f"deleted {kind} {spec.name}: the spec no longer asks for it")
    return deployment


async def _kafka_access(client: kube.KubeClient, spec: RecorderSpec) -> kafkalag.KafkaAccess:
    """Broker address and, for secured clusters, credentials from the referenced Secrets."""

    async def secret_value(name: str, key: str) -> str:
        secret = await client.get("v1", "Secret", spec.namespace, name)
        data = (secret or {}).get("data") or {}
        if key not in data:
            raise SpecError(f"Secret {spec.namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    access = kafkalag.KafkaAccess(
        brokers=spec.kafka.brokers, security_protocol=spec.kafka.security_protocol
    )
    if spec.kafka.sasl is not None:
        sasl = spec.kafka.sasl
        access = dataclasses.replace(
            access,
            sasl_mechanism=sasl.mechanism,
            sasl_username=await secret_value(sasl.username.name, sasl.username.key),
            sasl_password=await secret_value(sasl.password.name, sasl.password.key),
        )
    if spec.kafka.tls is not None:
        ca = await secret_value(spec.kafka.tls.secret_name, spec.kafka.tls.ca_key)
        access = dataclasses.replace(access, ca_pem=ca)
    return access


async def poll_lag(
    client: kube.KubeClient, spec: RecorderSpec, state: ObjectState, config: OperatorConfig
) -> None:
    try:
        access = await _kafka_access(client, spec)
        offsets = await kafkalag.read_offsets(
            access, spec.kafka.group_id, spec.kafka.topics, within=config.kafka_timeout_seconds
        )
    except Exception as exc:  # any Kafka failure only makes the lag unknown for a while
        state.lag, state.lag_error = None, f"cannot read lag from Kafka: {exc!r}"[:300]
        return
    state.lag = compute_lag(offsets, spec.autoscaling.offset_reset_policy)
    state.lag_time, state.lag_error = _now_iso(), None


async def scale(
    client: kube.KubeClient,
    body: kopf.Body,
    spec: RecorderSpec,
    state: ObjectState,
    deployment: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Operator mode: move the Deployment's replicas towards what the lag asks for."""
    if state.lag is None:
        return deployment
    auto = spec.autoscaling
    if state.stabilizer is None or state.stabilizer.window_seconds != (
        auto.scale_down_stabilization_seconds
    ):
        state.stabilizer = Stabilizer(auto.scale_down_stabilization_seconds)
    current = int((deployment.get("spec") or {}).get("replicas", 1))
    wanted = desired_replicas(
        state.lag,
        target_lag_per_replica=auto.target_lag_per_replica,
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        limit_to_partitions_with_lag=auto.limit_to_partitions_with_lag,
    )
    decision = state.stabilizer.decide(now, wanted, current)
    if decision.replicas == current:
        return deployment
    patched = await client.patch(
        "apps/v1",
        "Deployment",
        spec.namespace,
        spec.name,
        {"spec": {"replicas": decision.replicas}},
    )
    state.last_scale_time = _now_iso()
    kopf.info(
        body,
        reason="Scaled",
        message=f"{decision.reason}: {current} -> {decision.replicas} replicas "
        f"(lag {state.lag.total} on {state.lag.partitions} partitions)",
    )
    return patched or deployment


def _write_status(patch: Any, previous: Mapping[str, Any] | None, obs: status.Observation) -> None:
    wanted = status.compute_status(obs, previous, now=_now_iso())
    if status.status_changed(previous, wanted):
        for key, value in wanted.items():
            patch.status[key] = value


def _observation(
    meta: Mapping[str, Any],
    spec: RecorderSpec,
    deployment: dict[str, Any] | None,
    state: ObjectState,
) -> status.Observation:
    return status.Observation(
        generation=meta.get("generation"),
        deployment=deployment,
        selector=rendering.selector_string(spec),
        config_hash=rendering.config_hash(spec),
        lag=state.lag,
        lag_time=state.lag_time,
        lag_error=state.lag_error,
        last_scale_time=state.last_scale_time,
    )


def tune_settings(settings: kopf.OperatorSettings) -> None:
    """The operator's kopf settings (applied at startup)."""
    # Keep kopf's bookkeeping in annotations under our own prefix: the status schema is
    # strict (no status.kopf), and one operator's marks never collide with another's.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="datarecorder.dev"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="datarecorder.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "datarecorder.dev/finalizer"
    # Events: only the explicit ones (kopf.info "Scaled" is a Normal event, so the level must
    # admit INFO; a higher level silently drops it). Log lines are never posted as Events,
    # which keeps the resync's "patched ..." and kopf's "Handler succeeded" out of the API.
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    # Re-establish watches regularly: a silently dead connection otherwise stalls forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator (one per operator run or test)."""
    config = config or OperatorConfig()
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        memo.setdefault("kube", kube.KubeClient())
        tune_settings(settings)

    @kopf.on.login(registry=registry)
    async def login(memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            client = memo.setdefault("kube", kube.KubeClient())
            await client.use(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(memo: Any, **_: Any) -> None:
        client = memo.get("kube")
        if isinstance(client, kube.KubeClient):
            await client.close()

    @kopf.on.probe(registry=registry, id="kube")
    async def kube_ready(memo: Any, **_: Any) -> bool:
        return isinstance(memo.get("kube"), kube.KubeClient)

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    async def reconcile(
        body: kopf.Body,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        patch: kopf.Patch,
        memo: Any,
        logger: Any,
        **_: Any,
    ) -> None:
        client, state = _client(memo), _state(memo)
        try:
            rspec = parse_spec(meta["name"], meta["namespace"], dict(spec))
        except SpecError as exc:
            obs = _error(meta, str(exc), "InvalidSpec")
            _write_status(patch, status, obs)
            raise kopf.PermanentError(str(exc)) from exc
        try:
            deployment = await apply_children(client, body, rspec, logger)
        except kube.KubeError as exc:
            _write_status(patch, status, _error(meta, str(exc), "ReconcileFailed"))
            raise kopf.TemporaryError(str(exc), delay=10) from exc
        state.last_resync = time.monotonic()
        _write_status(patch, status, _observation(meta, rspec, deployment, state))

    @kopf.timer(*resource, interval=config.tick_seconds, registry=registry)
    async def tick(
        body: kopf.Body,
        meta: kopf.Meta,
        spec: kopf.Spec,
        status: kopf.Status,
        patch: kopf.Patch,
        memo: Any,
        logger: Any,
        **_: Any,
    ) -> None:
        if meta.get("deletionTimestamp"):
            return  # being deleted: never re-create what the delete handler removes
        client, state = _client(memo), _state(memo)
        try:
            rspec = parse_spec(meta["name"], meta["namespace"], dict(spec))
        except SpecError as exc:
            _write_status(patch, status, _error(meta, str(exc), "InvalidSpec"))
            return
        now = time.monotonic()
        try:
            if now - state.last_resync >= config.resync_seconds:
                deployment = await apply_children(client, body, rspec, logger)
                state.last_resync = now
            else:
                deployment = await client.get("apps/v1", "Deployment", rspec.namespace, rspec.name)
            poll_every = rspec.autoscaling.poll_interval_seconds
            if (rspec.operator_scaled or config.read_lag) and now - state.last_lag_poll >= (
                poll_every
            ):
                state.last_lag_poll = now
                await poll_lag(client, rspec, state, config)
            if rspec.operator_scaled and deployment is not None:
                deployment = await scale(client, body, rspec, state, deployment, now)
        except kube.KubeError as exc:
            logger.warning(f"reconciliation failed, retrying on the next tick: {exc}")
            _write_status(patch, status, _error(meta, str(exc), "ReconcileFailed"))
            return
        _write_status(patch, status, _observation(meta, rspec, deployment, state))

    @kopf.on.delete(*resource, registry=registry, optional=True)
    async def cleanup(meta: kopf.Meta, memo: Any, logger: Any, **_: Any) -> None:
        client = _client(memo)
        namespace, uid = meta["namespace"], meta.get("uid")
        for (api_version, kind), name in child_names(meta["name"]).items():
            if kind == "ServiceMonitor" and not await client.serves(
                "monitoring.coreos.com/v1", "servicemonitors"
            ):
                continue
            existing = await client.get(api_version, kind, namespace, name)
            if existing is not None and _owned_by(existing, uid):
                await client.delete(api_version, kind, namespace, name)
                logger.info(f"deleted {kind} {name} with its DataRecorder")

    return registry


def _error(meta: Mapping[str, Any], message: str, reason: str) -> status.Observation:
    return status.Observation(generation=meta.get("generation"), error=message, error_reason=reason)
