"""Thin asynchronous Kubernetes API client for the operator's children (aiohttp, JSON).

Owns URLs, authentication from kopf's `ConnectionInfo`, and HTTP error mapping; no decisions.
Children are written by server-side apply under the field manager `datarecorder-operator`
(forced: the operator's fields are the operator's), so a field the operator stops sending is
removed; other writes (replicas, status) are JSON merge patches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from datarecorder_operator import metrics

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
FIELD_MANAGER = "datarecorder-operator"


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = (
            f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        )
        return f"{path}/{name}" if name else path


# Every kind the operator reads or writes, by (apiVersion, kind).
RESOURCES: dict[tuple[str, str], ResourceType] = {
    ("v1", "ConfigMap"): ResourceType("", "v1", "configmaps"),
    ("v1", "Service"): ResourceType("", "v1", "services"),
    ("v1", "Secret"): ResourceType("", "v1", "secrets"),
    ("v1", "ServiceAccount"): ResourceType("", "v1", "serviceaccounts"),
    ("apps/v1", "Deployment"): ResourceType("apps", "v1", "deployments"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ResourceType(
        "autoscaling", "v2", "horizontalpodautoscalers"
    ),
    ("policy/v1", "PodDisruptionBudget"): ResourceType("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ResourceType(
        "networking.k8s.io", "v1", "networkpolicies"
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ResourceType(
        "monitoring.coreos.com", "v1", "servicemonitors"
    ),
    ("v1", "Event"): ResourceType("", "v1", "events"),
    ("v1", "Pod"): ResourceType("", "v1", "pods"),
    ("batch/v1", "Job"): ResourceType("batch", "v1", "jobs"),
    ("coordination.k8s.io/v1", "Lease"): ResourceType("coordination.k8s.io", "v1", "leases"),
    ("datarecorder.dev/v1alpha1", "DataRecorder"): ResourceType(
        "datarecorder.dev", "v1alpha1", "datarecorders"
    ),
}


def resource_of(api_version: str, kind: str) -> ResourceType:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from None


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeClient:
    """One aiohttp session to the API server, re-created when kopf logs in again."""

    def __init__(self, info: kopf.ConnectionInfo | None = None, timeout: float = 30.0) -> None:
        self._info = info
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def use(self, info: kopf.ConnectionInfo) -> None:
        """Switch to new credentials (after kopf's login activity)."""
        await self.close()
        self._info = info

    def _ensure(self) -> tuple[aiohttp.ClientSession, str]:
        if self._info is None:
            raise KubeError(401, "NotLoggedIn", "no credentials yet (kopf has not logged in)")
        if self._session is None or self._session.closed:
            info = self._info
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers=info.as_http_headers(),  # bearer token or basic auth
                timeout=self._timeout,
            )
        return self._session, self._info.server.rstrip("/")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One request; returns the decoded JSON, or None for 404."""
        session, server = self._ensure()
        metrics.API_REQUESTS.labels(method).inc()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        async with session.request(
            method, server + path, data=data, headers=headers, params=params
        ) as response:
            text = await response.text()
            if response.status == 404:
                return None
            if response.status >= 400:
                reason, message = response.reason or "", text
                try:
                    payload = json.loads(text)
                    reason = payload.get("reason") or reason
                    message = payload.get("message") or message
                except ValueError:
                    pass
                raise KubeError(response.status, str(reason), str(message)[:500])
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return await self._request("GET", resource_of(api_version, kind).path(namespace, name))

    async def list_names(
        self, api_version: str, kind: str, namespace: str, selector: Mapping[str, str]
    ) -> list[str]:
        """Names of the objects of a kind whose labels match `selector` (terminating ones too)."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        path = resource_of(api_version, kind).path(namespace)
        found = await self._request("GET", path, params=params) or {}
        return [str(item["metadata"]["name"]) for item in found.get("items") or []]

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        res = resource_of(manifest["apiVersion"], manifest["kind"])
        namespace = manifest["metadata"].get("namespace")
        result = await self._request("POST", res.path(namespace), body=manifest)
        if result is None:
            raise KubeError(404, "NotFound", f"{res.api_version} {res.plural} is not served")
        return result

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
        path = resource_of(api_version, kind).path(namespace, name)
        if subresource:
            path = f"{path}/{subresource}"
        return await self._request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT a whole object; its `metadata.resourceVersion` makes a concurrent write a 409."""
        res = resource_of(manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        result = await self._request(
            "PUT", res.path(meta.get("namespace"), meta["name"]), body=manifest
        )
        if result is None:
            raise KubeError(404, "NotFound", f"{res.api_version} {res.plural} {meta['name']}")
        return result

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a whole child (creates it when absent)."""
        res = resource_of(manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        path = res.path(meta.get("namespace"), meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        result = await self._request(
            "PATCH", path, body=manifest, content_type=APPLY_PATCH, params=params
        )
        if result is None:
            # A real API server creates on apply; a 404 means an emulator without server-side
            # apply (the tests' kmock), or a namespace that is gone (create says so).
            try:
                result = await self.create(manifest)
            except KubeError as exc:
                if exc.status != 409:
                    raise
                result = await self._request(  # created meanwhile: apply over it
                    "PATCH", path, body=manifest, content_type=APPLY_PATCH, params=params
                )
        if result is None:
            raise KubeError(404, "NotFound", f"{res.api_version} {res.plural} {meta['name']}")
        return result

    async def post_event(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *, now: str
    ) -> None:
        """A core/v1 Event about `obj` (what `kubectl describe` shows)."""
        meta = obj["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.create(event)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete in the background (dependents go by garbage collection); False if absent."""
        path = resource_of(api_version, kind).path(namespace, name)
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        return await self._request("DELETE", path, body=options) is not None

    async def api_available(self, api_version: str) -> bool:
        """Whether an API group version answers discovery (an aggregated API such as
        custom.metrics.k8s.io answers 503 while its APIService's backend is down)."""
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            return await self._request("GET", base) is not None
        except KubeError as exc:
            if exc.status == 503:
                return False
            raise

    async def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (e.g. the ServiceMonitor CRD is installed)."""
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        listing = await self._request("GET", base)
        if listing is None:
            return False
        return any(r.get("name") == plural for r in listing.get("resources") or [])
