"""The kopf wiring: handlers that call `reconcile.reconcile`, and the resync loop.

Owns the operator's registry (`build_registry`) and its kopf settings; what the handlers share
(the client, the DataRecorders seen with their per-resource state) is `memo.OperatorMemo`, the
memo `kopf.operator` must be given.

* create / update / resume: one pass that applies every child; an invalid spec writes a
  `Degraded` condition and raises `kopf.PermanentError` (no retry loop until the spec changes).
* event (every watch event): keeps the table current; a deleted DataRecorder leaves it (its
  children go by garbage collection through their owner references).
* Deployment events (a watch on apps/v1 Deployments with the recorders' labels): the table of
  owned Deployments by owner uid, so a pass reads replicas and readiness from memory instead of
  a GET per tick (`bench/operator_api_calls.py` counts the difference).
* the resync loop (one task for the whole operator, every `tick_seconds`): for each known
  DataRecorder, re-applies the children every `resync_seconds` (a child edited or deleted by
  hand is restored), reads lag, scales in mode `operator` and refreshes the status.

No finalizer: nothing outside Kubernetes needs cleaning when a DataRecorder goes, so deleting
one (or its namespace) never waits for the operator. That is why the periodic work is one
loop and not a kopf timer: kopf puts a finalizer on every resource that has a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from datarecorder_operator import kube, metrics
from datarecorder_operator.children import delete_children
from datarecorder_operator.memo import Deployments, OperatorMemo, Tracked
from datarecorder_operator.naming import RECORDER_LABELS, child_name
from datarecorder_operator.reconcile import measured, reconcile
from datarecorder_operator.spec import GROUP, KIND, PLURAL, VERSION, SpecError
from datarecorder_operator.state import Events, OperatorConfig, now_iso

__all__ = [
    "OperatorConfig",
    "OperatorMemo",
    "Tracked",
    "build_registry",
    "resync_all",
    "tune_settings",
]

log = logging.getLogger("datarecorder_operator")


def owner_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the DataRecorder that owns the Deployment `body` (None: not a DataRecorder's
    Deployment, or one of the old naming, `<name>`, which a migration is about to retire and
    which must not stand for the resource's Deployment `<name>-recorder` in the index)."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            if meta.get("name") != child_name(str(ref.get("name")), "Deployment"):
                return None
            return str(ref.get("uid"))
    return None


def _with_watched(entry: Tracked, deployments: Deployments) -> None:
    """Hand the watch's view of the entry's Deployment to the next pass."""
    uid = str(entry.body["metadata"].get("uid"))
    entry.state.deployment_watched = uid in deployments
    entry.state.watched_deployment = deployments.get(uid)


def event_poster(client: kube.KubeClient, body: Mapping[str, Any]) -> Events:
    """An `Events` callable that posts Events on `body` (a failed post is only logged)."""

    async def post(type_: str, reason: str, message: str) -> None:
        try:
            await client.post_event(body, type_, reason, message, now=now_iso())
        except (kube.KubeError, OSError) as exc:
            log.warning("cannot post event %s %s: %s", type_, reason, exc)

    return post


async def resync_one(
    client: kube.KubeClient,
    entry: Tracked,
    config: OperatorConfig,
    now: float,
    deployments: Deployments | None = None,
) -> None:
    """The loop's pass over one DataRecorder; writes its status through the subresource."""
    async with entry.lock:
        if deployments is not None:
            _with_watched(entry, deployments)
        body = entry.body
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return  # being deleted: never re-create what the garbage collector removes
        due = now - entry.state.last_resync >= config.resync_seconds
        events = event_poster(client, body)
        outcome = await measured(
            "resync",
            reconcile(client, body, entry.state, config, events, log, apply=due, now=now),
        )
        if isinstance(outcome.error, kube.KubeError):
            where = f"{meta['namespace']}/{meta['name']}"
            log.warning("reconciliation of %s failed: %s", where, outcome.error)
        if outcome.status is not None:
            written = await client.patch(
                body["apiVersion"],
                body["kind"],
                meta["namespace"],
                meta["name"],
                {"status": outcome.status},
                subresource="status",
            )
            if written is not None:
                entry.body = written  # the next pass compares with what is stored now


async def resync_all(memo: OperatorMemo, config: OperatorConfig) -> None:
    """Every `tick_seconds`, one pass over each DataRecorder the watch has shown."""
    while True:
        client = memo.kube
        if client is not None:
            for entry in list(memo.recorders.values()):
                try:
                    await resync_one(client, entry, config, time.monotonic(), memo.deployments)
                except Exception as exc:  # one resource's failure must not stop the others
                    meta = entry.body["metadata"]
                    log.warning("resync of %s/%s failed: %r", meta["namespace"], meta["name"], exc)
        metrics.set_recorders(entry.state.phase for entry in memo.recorders.values())
        await asyncio.sleep(config.tick_seconds)


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
    # Only a resource of an earlier version still carries it; kopf removes it when it sees
    # that no handler needs it.
    settings.persistence.finalizer = "datarecorder.dev/finalizer"
    # Events are posted by the operator itself (`event_poster`), never from log lines.
    settings.posting.enabled = False
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
    async def configure(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
        memo.ensure_client()  # before any resource handler copies the memo
        tune_settings(settings)
        memo.resync = asyncio.create_task(resync_all(memo, config), name="resync")
        if config.metrics_port:
            memo.metrics = await metrics.serve(config.metrics_port)

    @kopf.on.login(registry=registry)
    async def login(memo: OperatorMemo, **kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            await memo.ensure_client().use(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(memo: OperatorMemo, **_: Any) -> None:
        if memo.resync is not None:
            memo.resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await memo.resync
        for entry in memo.recorders.values():
            await entry.state.lag_reader.close()
        if memo.metrics is not None:
            await memo.metrics.cleanup()
        if memo.kube is not None:
            await memo.kube.close()

    @kopf.on.probe(registry=registry, id="kube")
    async def kube_ready(memo: OperatorMemo, **_: Any) -> bool:
        return memo.kube is not None

    @kopf.on.event(*resource, registry=registry)
    async def seen(
        event: Mapping[str, Any],
        body: kopf.Body,
        memo: OperatorMemo,
        logger: kopf.Logger,
        **_: Any,
    ) -> None:
        if event.get("type") == "DELETED":
            memo.deployments.pop(str(body["metadata"].get("uid")), None)
            gone = memo.recorders.pop(str(body["metadata"].get("uid")), None)
            if gone is not None:
                await gone.state.lag_reader.close()
            if memo.kube is not None:
                await delete_children(memo.kube, body["metadata"], logger)
            return
        memo.track(body)

    async def deployment_seen(
        event: Mapping[str, Any], body: kopf.Body, memo: OperatorMemo, **_: Any
    ) -> None:
        # Only remembered, never acted on here: the resync loop reads it on its next tick.
        uid = owner_uid(body)
        if uid is None:
            return
        deployments = memo.deployments
        if event.get("type") == "DELETED":
            deployments[uid] = None
        else:
            deployments[uid] = dict(body)

    if config.watch_deployments:
        kopf.on.event("apps", "v1", "deployments", labels=RECORDER_LABELS, registry=registry)(
            deployment_seen
        )

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    async def apply(
        body: kopf.Body, patch: kopf.Patch, memo: OperatorMemo, logger: kopf.Logger, **_: Any
    ) -> None:
        client = memo.client()
        entry = memo.track(body)
        async with entry.lock:
            _with_watched(entry, memo.deployments)
            events = event_poster(client, body)
            outcome = await measured(
                "handler",
                reconcile(client, body, entry.state, config, events, logger, apply=True),
            )
        for key, value in (outcome.status or {}).items():
            patch.status[key] = value
        if isinstance(outcome.error, SpecError):
            raise kopf.PermanentError(str(outcome.error)) from outcome.error
        if outcome.error is not None:
            raise kopf.TemporaryError(str(outcome.error), delay=10) from outcome.error

    return registry
