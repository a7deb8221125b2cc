"""The guardrails: what a tenant's DataRecorder may ask of the pods the operator creates with its
own rights, and which Secrets it may use.

Owns `Policy` (restricted by default; permissive keeps the old freedom, then the right to create
a DataRecorder is the right to create any pod in its namespace), `policy_violations`, the safe
security-context defaults and their merge, the Secret mark and the key-safe name check. Pure.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Literal

PolicyMode = Literal["restricted", "permissive"]
POLICY_MODES: tuple[PolicyMode, ...] = ("restricted", "permissive")

# What a recorder pod may mount: its own configuration, Secrets, scratch space and claims the
# namespace already holds. No hostPath, no node-level or network file systems; narrower than the
# Pod Security Standards' "restricted" list: no inline `csi` (a driver such as the Secrets Store
# CSI mounts external secrets with the pod's identity) and no `ephemeral` (it creates claims).
ALLOWED_VOLUME_TYPES = frozenset(
    {"configMap", "downwardAPI", "emptyDir", "persistentVolumeClaim", "projected", "secret"}
)
HOST_NAMESPACE_FIELDS = ("hostNetwork", "hostPID", "hostIPC")


@dataclasses.dataclass(frozen=True)
class Policy:
    """The operator's `--policy` and its allow-lists (the chart's `policy` value)."""

    mode: PolicyMode = "restricted"
    # Registry or repository prefixes ("ghcr.io/acme", "registry.example.com:5000/"); empty:
    # any image. A prefix matches at a path boundary: "ghcr.io/acme" does not allow
    # "ghcr.io/acme-evil/x".
    allowed_images: tuple[str, ...] = ()
    # ServiceAccounts (of the DataRecorder's namespace) that spec.serviceAccountName may name.
    allowed_service_accounts: tuple[str, ...] = ()

    @property
    def restricted(self) -> bool:
        return self.mode == "restricted"


RESTRICTED = Policy()
PERMISSIVE = Policy(mode="permissive")


def image_allowed(image: str, prefixes: Sequence[str]) -> bool:
    """Whether `image` comes from one of `prefixes` (empty: any image)."""
    if not prefixes:
        return True
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if base and (image == base or any(image.startswith(base + sep) for sep in "/:@")):
            return True
    return False


# Safe defaults that a user-supplied security context is merged onto, never replaces.
SAFE_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
SAFE_CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def merge_security_context(safe: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` laid over `safe`: a key the user sets wins (the policy has refused the unsafe
    values before), a key the user leaves out, or sets to null, keeps its safe value, and the
    dropped capabilities are always a superset of the safe ones."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in safe.items()}
    for key, value in given.items():
        if value is None and key in safe:
            continue  # null would unset it on the API server: not a way around a safe default
        if key == "capabilities" and isinstance(value, Mapping):
            safe_caps = safe.get("capabilities") or {}
            drop = [*safe_caps.get("drop", [])]
            drop += [c for c in value.get("drop") or [] if c not in drop]
            caps: dict[str, Any] = {"drop": drop}
            if value.get("add"):
                caps["add"] = list(value["add"])
            out[key] = caps
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _context_violations(path: str, ctx: Mapping[str, Any] | None) -> list[str]:
    if not ctx:
        return []
    found: list[str] = []
    if ctx.get("privileged") is True:
        found.append(f"{path}.privileged: privileged containers are not allowed")
    caps = ctx.get("capabilities")
    if isinstance(caps, Mapping) and caps.get("add"):
        found.append(f"{path}.capabilities.add: adding capabilities is not allowed")
    uid = ctx.get("runAsUser")
    if isinstance(uid, int) and not isinstance(uid, bool) and uid == 0:
        found.append(f"{path}.runAsUser: uid 0 (root) is not allowed")
    if ctx.get("runAsNonRoot") is False:
        found.append(f"{path}.runAsNonRoot: false is not allowed (the pods run as non-root)")
    if ctx.get("allowPrivilegeEscalation") is True:
        found.append(f"{path}.allowPrivilegeEscalation: true is not allowed")
    seccomp = ctx.get("seccompProfile")
    if isinstance(seccomp, Mapping) and seccomp.get("type") == "Unconfined":
        found.append(f"{path}.seccompProfile: Unconfined is not allowed")
    return found


def policy_violations(spec: Mapping[str, Any], policy: Policy) -> list[str]:
    """Every way the DataRecorder `spec` (as written, after parsing found its types right)
    breaks `policy`; empty when it keeps it.

    Restricted refuses what would let a tenant's DataRecorder run a pod the tenant could not
    create itself: privileged or root containers, added capabilities, privilege escalation,
    host namespaces, hostPath and other volume types outside `ALLOWED_VOLUME_TYPES`, images
    outside `policy.allowed_images`, ServiceAccounts (and their tokens) not meant for it. The
    chart's ValidatingAdmissionPolicy states the same rules in CEL.
    """
    if not policy.restricted:
        return []
    found: list[str] = []
    for key in ("podSecurityContext", "containerSecurityContext"):
        found += _context_violations(f"spec.{key}", spec.get(key))
    for field in HOST_NAMESPACE_FIELDS:
        if spec.get(field):
            found.append(f"spec.{field}: host namespaces are not allowed")
    for i, volume in enumerate(spec.get("volumes") or ()):
        for kind in sorted(set(volume) - {"name"} - ALLOWED_VOLUME_TYPES):
            found.append(
                f"spec.volumes[{i}]: volume type {kind} is not allowed (allowed: "
                f"{', '.join(sorted(ALLOWED_VOLUME_TYPES))})"
            )
    image = str(spec.get("image", ""))
    if not image_allowed(image, policy.allowed_images):
        found.append(
            f"spec.image: {image!r} is not from an allowed registry "
            f"({', '.join(policy.allowed_images)})"
        )
    sa = spec.get("serviceAccountName")
    if sa is not None and sa not in policy.allowed_service_accounts:
        found.append(
            f"spec.serviceAccountName: {sa!r} is not an allowed ServiceAccount; use "
            "spec.serviceAccount (the operator makes one for the recorder) or ask for it "
            "to be listed in the operator's policy"
        )
    if spec.get("automountServiceAccountToken") is True and (
        spec.get("serviceAccount") is None and sa is None
    ):
        found.append(
            "spec.automountServiceAccountToken: a token is mounted only for spec.serviceAccount "
            "(the operator's) or an allowed serviceAccountName, never the namespace's default"
        )
    return found


def key_name_problem(value: str) -> str | None:
    """Why `value` (a consumer group or an S3 prefix: both end up in object keys and local
    paths) is unfit, or None: no `..`, no `/` at either edge, no control characters."""
    if ".." in value:
        return "must not contain '..'"
    if value.startswith("/") or value.endswith("/"):
        return "must not start or end with '/'"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "must not contain control characters"
    return None


# A Secret a DataRecorder may use names the DataRecorders it is for:
# `datarecorder.dev/recorders: "rec, other"` ("*": every DataRecorder of its namespace). The
# operator reads only such Secrets (its lag reads), and under the restricted policy renders
# recorder pods that reference only such Secrets: a spec cannot hand its author a Secret of the
# namespace that its owner did not mark.
SECRET_MARK_ANNOTATION = "datarecorder.dev/recorders"
ANY_RECORDER = "*"


def secret_marked_for(secret: Mapping[str, Any] | None, recorder: str) -> bool:
    """Whether the Secret object `secret` is marked for the DataRecorder named `recorder`."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    names = {n.strip() for n in str(annotations.get(SECRET_MARK_ANNOTATION, "")).split(",")}
    return recorder in names or ANY_RECORDER in names
