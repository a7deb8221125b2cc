"""A kmock Kubernetes emulator that fills the metadata gaps kopf needs, and the operator on it.

Owns `MetadataEmulator` (uid, resourceVersion, generation, creationTimestamp that kmock 0.8
leaves out) and `running_operator` (kopf's own `kopf.operator` in a task, logged in through a
kubeconfig that points at the emulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from datarecorder_operator.handlers import OperatorConfig, OperatorMemo, build_registry
from datarecorder_operator.spec import SECRET_MARK_ANNOTATION

DR_PATH = "/apis/datarecorder.dev/v1alpha1/namespaces/{ns}/datarecorders"
PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "ServiceMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors",
    "DataRecorder": DR_PATH,
    "Secret": "/api/v1/namespaces/{ns}/secrets",
}
# The Secret the tests' DataRecorders name (namespace md), marked for every DataRecorder there:
# the restricted policy renders pods that read only marked Secrets.
SEEDED_SECRET: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "db", "namespace": "md", "annotations": {SECRET_MARK_ANNOTATION: "*"}},
    "data": {"password": "cHc="},
}


def _merged(old: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping) or not isinstance(old, Mapping):
        return patch
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(old.get(key), value)
    return out


class MetadataEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the server-side metadata a real API server writes.

    Like a real server: a new uid, creationTimestamp and generation 1 on create; a new
    resourceVersion on every write; generation + 1 when a write changes `spec`.
    """

    _counter = itertools.count(1)

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if request.resource is None:
            return await super()._handle(request)
        key = (request.resource, request.namespace, request.name)
        current = None
        if request.name is not None and key in self.objects and not self.objects[key].deleted:
            current = self.objects[key].raw
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = str(next(self._counter))
            meta["generation"] = 1
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        elif request.action == kmock.action.UPDATE and current is not None:
            version = str(next(self._counter))
            if isinstance(data, list):  # a JSON patch: kopf guards it with a resourceVersion test
                have = current.get("metadata", {}).get("resourceVersion")
                for op in data:
                    guard = op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
                    if guard and op.get("value") != have:
                        # A real API server answers 422, which kopf retries on a fresh body
                        # (kmock 0.8 answers 500, which kopf retries with the stale one).
                        raise kmock.KubernetesError(
                            status=422, reason="Invalid", message="resourceVersion changed"
                        )
                data.append(
                    {"op": "replace", "path": "/metadata/resourceVersion", "value": version}
                )
            elif isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                old_spec = current.get("spec")
                spec_write = not request.subresource and "spec" in data
                if spec_write and _merged(old_spec, data["spec"]) != old_spec:
                    meta["generation"] = current.get("metadata", {}).get("generation", 1) + 1
        return await super()._handle(request)


class Cluster:
    """The emulator plus small HTTP helpers for the test's side (a kubectl of sorts)."""

    def __init__(self, emulator: MetadataEmulator) -> None:
        self.emulator = emulator

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        data = None if body is None else json.dumps(body)
        async with self.emulator.request(method, path, data=data, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        path = PATHS[obj["kind"]].format(ns=obj["metadata"]["namespace"])
        status, body = await self._call("POST", path, obj)
        assert status in (200, 201), body
        result: dict[str, Any] = body
        return result

    async def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        status, body = await self._call("GET", f"{PATHS[kind].format(ns=ns)}/{name}")
        return body if status == 200 else None

    async def patch(
        self, kind: str, ns: str, name: str, patch: Any, sub: str = ""
    ) -> dict[str, Any]:
        path = f"{PATHS[kind].format(ns=ns)}/{name}" + (f"/{sub}" if sub else "")
        status, body = await self._call("PATCH", path, patch)
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def delete(self, kind: str, ns: str, name: str) -> int:
        status, _ = await self._call("DELETE", f"{PATHS[kind].format(ns=ns)}/{name}")
        return status

    async def wait_for(
        self,
        probe: Callable[[], Awaitable[Any]],
        within: float = 15.0,
        what: str = "condition",
    ) -> Any:
        """Poll `probe` until it returns something truthy; its last value on timeout."""
        deadline = asyncio.get_running_loop().time() + within
        value = None
        while asyncio.get_running_loop().time() < deadline:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(0.1)
        pytest.fail(f"timed out after {within}s waiting for {what}; last value: {value!r}")


def declare_resources(emulator: MetadataEmulator, *, service_monitors: bool) -> None:
    # kopf waits until discovery shows `namespaces` (even when it watches cluster-wide).
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"get", "list", "watch"}
    )
    emulator.resources["datarecorder.dev/v1alpha1/datarecorders"] = kmock.ResourceInfo(
        kind="DataRecorder",
        singular="datarecorder",
        namespaced=True,
        shortnames={"drec"},
        subresources={"status", "scale"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    )
    # The operator watches its Deployments (list + watch), as on a real API server.
    emulator.resources["apps/v1/deployments"] = kmock.ResourceInfo(
        kind="Deployment",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
    )
    if service_monitors:
        emulator.resources["monitoring.coreos.com/v1/servicemonitors"] = kmock.ResourceInfo(
            kind="ServiceMonitor",
            namespaced=True,
            verbs={"get", "list", "watch", "create", "patch", "delete"},
        )


def write_kubeconfig(path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config))


@contextlib.asynccontextmanager
async def running_operator(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    service_monitors: bool = False,
    config: OperatorConfig | None = None,
) -> AsyncIterator[Cluster]:
    """The emulator on a loopback port and the operator (kopf's runner) connected to it."""
    async with MetadataEmulator() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator, service_monitors=service_monitors)
        await Cluster(emulator).create(SEEDED_SECRET)
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, str(server.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        registry = build_registry(
            config or OperatorConfig(tick_seconds=0.3, resync_seconds=0.5, kafka_timeout_seconds=2)
        )
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=True,
                ready_flag=ready,
                stop_flag=stop,
                memo=OperatorMemo(),
            )
        )
        try:
            await asyncio.wait_for(ready.wait(), timeout=15)
            yield Cluster(emulator)
            assert not task.done(), "the operator exited during the test"
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, timeout=15)
            except TimeoutError:
                task.cancel()
