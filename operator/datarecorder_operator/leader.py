"""Leader election on a coordination.k8s.io Lease: one operator replica works, the others wait.

Owns the Lease protocol, with client-go's rules (`leaderelection.go`): the leader renews the
Lease every `retry_seconds` and stops (the process exits) once renewals have failed for
`renew_deadline_seconds`; a candidate takes the Lease only after its record has stayed the same
for `lease_seconds` on the candidate's *own* monotonic clock (never comparing its clock with
the holder's `renewTime`, so clock skew between nodes cannot make two leaders). Because
`renew_deadline_seconds < lease_seconds`, an old leader has stopped before anyone may take over.

Why a Lease and not kopf's peering: kopf freezes *every* operator when two have the same
priority, and replicas of one Deployment all run with the same arguments; its peering also
pauses only kopf's watchers, not the operator's own resync loop, and its default keep-alive
(60 s) is a slower bound. A Lease gives one writer and a takeover bound of `lease_seconds`
plus a retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from datarecorder_operator import kube

log = logging.getLogger("datarecorder_operator.leader")

LEASE = ("coordination.k8s.io/v1", "Lease")


@dataclasses.dataclass(frozen=True)
class ElectionConfig:
    """Where the Lease lives, who we are, and client-go's default timing."""

    namespace: str
    identity: str
    name: str = "datarecorder-operator"
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease duration, got "
                f"{self.retry_seconds}, {self.renew_deadline_seconds}, {self.lease_seconds}"
            )


# What a candidate compares between reads: holder, renew time and transitions.
Record = tuple[str, str, int]


def record_of(lease: Mapping[str, Any]) -> Record:
    spec = lease.get("spec") or {}
    return (
        str(spec.get("holderIdentity") or ""),
        str(spec.get("renewTime") or ""),
        int(spec.get("leaseTransitions") or 0),
    )


def may_take(record: Record, identity: str, unchanged_for: float, lease_seconds: float) -> bool:
    """Pure: whether `identity` may write the Lease whose `record` it has seen unchanged for
    `unchanged_for` seconds of its own clock (its own or released Leases at once)."""
    holder = record[0]
    return holder in ("", identity) or unchanged_for >= lease_seconds


def _micro_time(now: datetime.datetime) -> str:
    # metav1.MicroTime: RFC 3339 with microseconds.
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    previous: Mapping[str, Any] | None, identity: str, lease_seconds: float, now: str
) -> dict[str, Any]:
    """Pure: the spec that makes `identity` the holder, renewed at `now`."""
    old = dict(previous or {})
    ours = old.get("holderIdentity") == identity
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(lease_seconds)),
        "acquireTime": old.get("acquireTime") if ours and old.get("acquireTime") else now,
        "renewTime": now,
        "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if ours or not old else 1),
    }


class LeaseElector:
    """Acquires, renews and releases the Lease for one operator process."""

    def __init__(
        self,
        client: kube.KubeClient,
        config: ElectionConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.config, self._clock = client, config, clock
        self._seen: tuple[Record, float] | None = None  # record and when it last changed

    def _wall(self) -> str:
        return _micro_time(datetime.datetime.now(datetime.UTC))

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True when we hold it afterwards."""
        cfg = self.config
        lease = await self.client.get(*LEASE, cfg.namespace, cfg.name)
        now = self._clock()
        if lease is None:
            body = {
                "apiVersion": LEASE[0],
                "kind": LEASE[1],
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": lease_spec(None, cfg.identity, cfg.lease_seconds, self._wall()),
            }
            try:
                created = await self.client.create(body)
            except kube.KubeError as exc:
                if exc.status == 409:  # another candidate created it first
                    return False
                raise
            self._seen = (record_of(created), now)
            return True
        record = record_of(lease)
        if self._seen is None or self._seen[0] != record:
            self._seen = (record, now)
        if not may_take(record, cfg.identity, now - self._seen[1], cfg.lease_seconds):
            return False
        lease["spec"] = lease_spec(lease.get("spec"), cfg.identity, cfg.lease_seconds, self._wall())
        try:
            # A PUT carries the resourceVersion read above: of two candidates, one wins.
            written = await self.client.replace(lease)
        except kube.KubeError as exc:
            if exc.status == 409:
                return False
            raise
        self._seen = (record_of(written), now)
        return True

    async def acquire(self) -> None:
        """Wait until we hold the Lease."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    log.info(
                        "leading: holding Lease %s/%s", self.config.namespace, self.config.name
                    )
                    return
            except (kube.KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("cannot read or write the Lease: %s", exc)
            if not announced and self._seen is not None:
                log.info("waiting for leadership: Lease held by %s", self._seen[0][0])
                announced = True
            await asyncio.sleep(self.config.retry_seconds)

    async def hold(self) -> None:
        """Renew until renewals have failed for `renew_deadline_seconds`; then return, and the
        caller must stop working at once (someone else may lead `lease_seconds` later)."""
        cfg = self.config
        last_ok = self._clock()
        while True:
            await asyncio.sleep(cfg.retry_seconds)
            left = cfg.renew_deadline_seconds - (self._clock() - last_ok)
            try:
                async with asyncio.timeout(max(0.1, left)):
                    renewed = await self.try_acquire()
            except (kube.KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("cannot renew the Lease: %s", exc)
                renewed = False
            if renewed:
                last_ok = self._clock()
            elif self._clock() - last_ok >= cfg.renew_deadline_seconds:
                log.error("lost the Lease %s/%s", cfg.namespace, cfg.name)
                return

    async def release(self) -> None:
        """On a clean stop: give the Lease up so a standby takes over without waiting it out."""
        cfg = self.config
        try:
            lease = await self.client.get(*LEASE, cfg.namespace, cfg.name)
            if lease is None or record_of(lease)[0] != cfg.identity:
                return
            spec = dict(lease.get("spec") or {})
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=self._wall())
            lease["spec"] = spec
            await self.client.replace(lease)
        except (kube.KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot release the Lease: %s", exc)
