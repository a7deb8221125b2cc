"""The operator's memory across its kopf handlers and the resync loop: kopf's `memo`, typed.

Owns `OperatorMemo` (the Kubernetes client, the DataRecorders seen, the watched Deployments and
the background tasks) and `Tracked`, one DataRecorder with its per-resource state.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import kopf
from aiohttp import web

from datarecorder_operator.kube import KubeClient
from datarecorder_operator.state import ObjectState


@dataclasses.dataclass
class Tracked:
    """A DataRecorder as last seen on the watch, and the operator's memory of it."""

    body: dict[str, Any]
    state: ObjectState = dataclasses.field(default_factory=ObjectState)
    # One pass at a time per resource: kopf's handler and the loop share the state.
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


Table = dict[str, Tracked]  # by uid
Deployments = dict[str, dict[str, Any] | None]  # the watched Deployment by its owner's uid


@dataclasses.dataclass
class OperatorMemo:
    """What every handler shares; given to `kopf.operator(memo=...)`.

    kopf hands each resource's handlers a shallow copy of it, taken when the resource is first
    seen, after the startup handlers ran: the tables are created with the memo and the client
    by startup (or login), so every copy shares the same ones.
    """

    kube: KubeClient | None = None
    recorders: Table = dataclasses.field(default_factory=dict)
    deployments: Deployments = dataclasses.field(default_factory=dict)
    resync: asyncio.Task[None] | None = None  # the resync loop
    metrics: web.AppRunner | None = None  # the operator's /metrics server, when served

    def client(self) -> KubeClient:
        """The Kubernetes client, once login or startup has made it."""
        if self.kube is None:
            raise kopf.TemporaryError("the Kubernetes client is not ready yet", delay=1)
        return self.kube

    def ensure_client(self) -> KubeClient:
        """The client, made (without credentials yet) if login and startup have not."""
        if self.kube is None:
            self.kube = KubeClient()
        return self.kube

    def track(self, body: Mapping[str, Any]) -> Tracked:
        """The table's entry for the DataRecorder `body`, added or given its latest body."""
        uid = str(body["metadata"].get("uid"))
        entry = self.recorders.get(uid)
        if entry is None:
            entry = self.recorders[uid] = Tracked(dict(body))
        else:
            entry.body = dict(body)
        return entry
