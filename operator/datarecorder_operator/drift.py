"""Drift: whether a rendered child must be applied over what the server holds; pure.

Owns the comparison (a subset, quantities by value), the digest each applied child carries and
the ConfigMap keys the rendering no longer has.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from datarecorder_operator import quantity
from datarecorder_operator.naming import Manifest

Path = tuple[str | int, ...]

# Where the children carry a resource.Quantity: the server stores those canonicalized ("0.5"
# as "500m", "1024Mi" as "1Gi", "10000" as "10k"), so drift compares them by value there, and
# only there (an environment value "1k" is not "1000"). "*" matches any key or list index.
QUANTITY_PATHS: dict[str, tuple[Path, ...]] = {
    "Deployment": (
        ("spec", "template", "spec", "containers", "*", "resources", "*", "*"),
        ("spec", "template", "spec", "volumes", "*", "emptyDir", "sizeLimit"),
    ),
    "HorizontalPodAutoscaler": (
        ("spec", "metrics", "*", "*", "target", "averageValue"),
        ("spec", "metrics", "*", "*", "target", "value"),
    ),
}


def _matches(path: Path, pattern: Path) -> bool:
    return len(path) == len(pattern) and all(
        want == "*" or want == got for got, want in zip(path, pattern, strict=True)
    )


def is_subset(
    desired: Any, actual: Any, quantities: tuple[Path, ...] = (), path: Path = ()
) -> bool:
    """Whether `actual` already carries everything in `desired` (extra server fields allowed).

    Lists must match item by item (same length): a merge patch replaces lists wholesale, so
    an extra container or env entry added by hand is drift too. Values at a path matching one
    of `quantities` compare as Kubernetes quantities.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(
            k in actual and is_subset(v, actual[k], quantities, (*path, k))
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(
            is_subset(d, a, quantities, (*path, i))
            for i, (d, a) in enumerate(zip(desired, actual, strict=True))
        )
    if isinstance(desired, bool) or isinstance(actual, bool):
        return desired is actual
    if any(_matches(path, pattern) for pattern in quantities):
        return quantity.same(desired, actual)
    if isinstance(desired, int | float) and isinstance(actual, int | float):
        return desired == actual
    return bool(desired == actual)


# On every child: a digest of what the operator last applied to it. Server-side apply removes a
# field the operator applied before and no longer sends; the digest is how a pass notices that
# the rendering changed even when everything it still renders is already in place.
APPLIED_ANNOTATION = "datarecorder.dev/applied-digest"


def applied_digest(manifest: Manifest) -> str:
    """A digest of a rendered child, without `spec.replicas` (an autoscaler's to move)."""
    body = copy.deepcopy(manifest)
    (body.get("spec") or {}).pop("replicas", None)
    annotations = body["metadata"].pop("annotations", None) or {}
    annotations.pop(APPLIED_ANNOTATION, None)
    if annotations:
        body["metadata"]["annotations"] = annotations
    blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stamped(manifest: Manifest) -> Manifest:
    """The child as the operator applies it: the rendering plus its digest annotation."""
    out = copy.deepcopy(manifest)
    meta = out["metadata"]
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        APPLIED_ANNOTATION: applied_digest(manifest),
    }
    return out


def needs_apply(desired: Manifest, actual: Mapping[str, Any] | None) -> bool:
    """Whether the stamped child `desired` must be applied over `actual` (None: absent).

    Pure. Applied when the object is missing, when a field the operator sets differs (an edit
    by hand, a spec change), or when the digest differs (the rendering dropped a field: the
    apply removes it). Fields only the server or other actors set are left alone; quantities
    compare by value (the server rewrites them canonically).
    """
    if actual is None:
        return True
    if stale_config_keys(desired, actual):
        return True
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
    return not is_subset(body, actual, QUANTITY_PATHS.get(desired.get("kind", ""), ()))


def stale_config_keys(desired: Manifest, actual: Mapping[str, Any]) -> list[str]:
    """Keys of the recorder's ConfigMap that the rendering does not have.

    The whole map is the operator's: every key becomes the recorder's environment, so a key
    added by hand (which server-side apply would keep, as another manager's) is removed too.
    """
    if desired.get("kind") != "ConfigMap":
        return []
    return sorted(set(actual.get("data") or {}) - set(desired.get("data") or {}))
