"""Applying a DataRecorder's children: server-side apply of what is missing or drifted.

Owns the children's kinds, the apply pass (never taking over an object the resource does not
own, retiring the old names of `migration`), their deletion, and the restricted policy's gate:
the Secrets the pods would read must be marked for the DataRecorder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import kopf

from datarecorder_operator import (
    drift,
    kube,
    metrics,
    migration,
    naming,
    rendering,
    replicas,
    status,
    workload,
)
from datarecorder_operator.policy import (
    SECRET_MARK_ANNOTATION,
    secret_marked_for,
)
from datarecorder_operator.spec import (
    RecorderSpec,
)
from datarecorder_operator.state import ObjectState

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
