"""What a DataRecorder's children are called and how they are labelled; pure.

Owns `child_name`, the one function that names a child (every kind, the reset Job, and the
names of the old naming that a migration retires), and the labels that select the recorders.
"""

from __future__ import annotations

from typing import Any

from datarecorder_operator.spec import RecorderSpec

# A child as the Kubernetes API takes it.
Manifest = dict[str, Any]

CHILD_SUFFIX = "-recorder"
MANAGED_BY = "datarecorder-operator"
# A Job name is a label value (at most 63): the DataRecorder's name is cut to leave room for
# `-reset-` and the reset's digest.
_JOB_NAME_PREFIX = 46

_APP = {"app.kubernetes.io/name": "datarecorder"}
_COMPONENT = {"app.kubernetes.io/component": "recorder"}
_MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
# The labels every recorder pod and its Deployment carry whatever the DataRecorder: what the
# operator's Deployment watch selects.
RECORDER_LABELS = {**_APP, **_COMPONENT, **_MANAGED}


def child_name(recorder: str, kind: str, *, reset: str | None = None, legacy: bool = False) -> str:
    """The name of the child `kind` of the DataRecorder named `recorder`.

    `<name>-recorder` (the ConfigMap `<name>-recorder-config`), so that the children do not
    collide with the user's own objects named like the DataRecorder. The reset Job is
    `<name>-reset-<reset>` (`reset`: the digest of one reset, a new name per reset). `legacy`:
    the name an older release gave the child (`<name>`, the ConfigMap `<name>-config`), which
    `migration` retires.
    """
    if kind == "Job":
        if reset is None:
            raise ValueError("a reset Job's name needs the reset's digest")
        return f"{recorder[:_JOB_NAME_PREFIX].rstrip('-')}-reset-{reset}"
    base = recorder if legacy else f"{recorder}{CHILD_SUFFIX}"
    return f"{base}-config" if kind == "ConfigMap" else base


def selector_labels(spec: RecorderSpec) -> dict[str, str]:
    """The labels the Deployment, Service, PDB and ServiceMonitor select pods by.

    The component keeps a DataRecorder named like the Helm release (both `datarecorder` by
    default) from selecting the operator's own pod, whose component is `operator`.
    """
    return {**_APP, "app.kubernetes.io/instance": spec.name, **_COMPONENT}


def selector_string(spec: RecorderSpec) -> str:
    """The label selector as a string, for the scale subresource (`status.selector`)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(spec).items()))


def common_labels(spec: RecorderSpec) -> dict[str, str]:
    return {**selector_labels(spec), **_MANAGED}


def metadata(spec: RecorderSpec, kind: str) -> dict[str, Any]:
    """A child's metadata: its name, the DataRecorder's namespace, the common labels."""
    return {
        "name": child_name(spec.name, kind),
        "namespace": spec.namespace,
        "labels": common_labels(spec),
    }
