"""How many recorders a Deployment is given, and who owns that count; pure.

Owns the replicas the operator applies (a fresh start, an autoscaler's count kept, 0 while
stopped and the count restored after), the count a stop remembers, and the HPA's ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datarecorder_operator.spec import RecorderSpec

# On a stopped recorder's Deployment: the replicas it ran before the stop, restored when
# spec.state is running again (an autoscaler's count would otherwise be lost to the 0).
REPLICAS_BEFORE_STOP_ANNOTATION = "datarecorder.dev/replicas-before-stop"


def initial_replicas(spec: RecorderSpec) -> int:
    """Replicas a new Deployment starts with (autoscalers take over afterwards)."""
    if spec.autoscaling.enabled:
        return spec.autoscaling.min_replicas
    return spec.replicas


def hpa_max_replicas(spec: RecorderSpec, partitions: int | None) -> int:
    """maxReplicas, capped where the partition count is known: a pod beyond partitions ÷
    consumers per pod would hold no partition and only add rebalances."""
    auto = spec.autoscaling
    if partitions is None:
        return auto.max_replicas
    useful = max(1, partitions // spec.batching.num_consumers)
    return max(auto.min_replicas, min(auto.max_replicas, useful))


def applies_replicas(deployment: Mapping[str, Any], manager: str) -> bool:
    """Whether `manager`'s server-side apply still owns the Deployment's `spec.replicas`.

    An HPA (or `kubectl scale`, or the operator's own scale patch) writes replicas through an
    update, and the API server then moves the field's ownership to that writer.
    """
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            return True
    return False


def replicas_before_stop(deployment: Mapping[str, Any] | None) -> int | None:
    """The count a stopped Deployment remembers (`REPLICAS_BEFORE_STOP_ANNOTATION`), if any."""
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    value = str(annotations.get(REPLICAS_BEFORE_STOP_ANNOTATION, ""))
    return int(value) if value.isdigit() else None


def deployment_replicas(
    spec: RecorderSpec,
    *,
    current_replicas: int | None = None,
    replicas_owned_elsewhere: bool = False,
    before_stop: int | None = None,
) -> int | None:
    """The Deployment's `spec.replicas` to apply (None: left to the autoscaler that owns it).

    Stopped: 0, whoever owned the field (the forced apply takes it back; the HPA is not
    rendered, the operator does not scale). Running again after a stop (`before_stop` is
    known) with autoscaling: the count before the stop, within min and max; without
    autoscaling `spec.replicas` is the count.
    """
    auto = spec.autoscaling
    if spec.stopped:
        return 0
    if not auto.enabled:
        return spec.replicas
    if before_stop is not None:
        return min(max(before_stop, auto.min_replicas), auto.max_replicas)
    if replicas_owned_elsewhere:
        return None
    return current_replicas if current_replicas is not None else initial_replicas(spec)
