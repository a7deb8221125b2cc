"""Pure rules of the move from children named `<name>` to `<name>-recorder`.

Releases before it named the Deployment, Service, PDB, HPA, ServiceMonitor and ServiceAccount
exactly like the DataRecorder (ConfigMap `<name>-config`). `children.apply_children` applies the
new children first and retires the old ones it owns: the old PDB before the new one is applied
(the eviction API refuses a pod covered by two PDBs), the old HPA as the new one is applied, and
the rest once the new Deployment is available. Two Deployments of one consumer group overlap
meanwhile; the recorders' exactly-once protocol makes that an ordinary rebalance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (apiVersion, kind) of every child, in the order old ones are retired: the workload before
# the objects it uses, so that no old pod runs without its ConfigMap or ServiceAccount.
LEGACY_KINDS: tuple[tuple[str, str], ...] = (
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("apps/v1", "Deployment"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
)
# Retired as soon as their replacement is applied, without waiting for the new Deployment.
RETIRED_BEFORE_APPLY = frozenset({"PodDisruptionBudget", "HorizontalPodAutoscaler"})


def available(deployment: Mapping[str, Any] | None) -> bool:
    """Whether the new Deployment can take over: every desired replica updated and available
    (for the generation applied), or none desired."""
    if deployment is None:
        return False
    spec = deployment.get("spec") or {}
    wanted = int(spec.get("replicas", 1))
    if wanted == 0:
        return True
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    return (
        int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        and int(status.get("updatedReplicas", 0)) >= wanted
        and int(status.get("availableReplicas", 0)) >= wanted
    )
