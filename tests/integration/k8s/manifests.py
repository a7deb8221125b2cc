"""DataRecorder manifests for the tests against the real control plane of scripts/k8s.

Owns the CRD's coordinates and the minimal valid spec the tests start from.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fixtures.k8s import K8s

GROUP = "datarecorder.dev"
VERSION = "v1alpha1"
PLURAL = "datarecorders"
CRD_NAME = f"{PLURAL}.{GROUP}"

# The smallest spec the CRD accepts: everything else has a default or is optional.
MINIMAL_SPEC: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["kafka-0.kafka:9092"]},
    "timescaledb": {"host": "timescaledb.db", "passwordSecret": {"name": "tsdb"}},
}


def data_recorder(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """A DataRecorder manifest: MINIMAL_SPEC with top-level spec keys replaced."""
    spec = copy.deepcopy(MINIMAL_SPEC)
    spec.update(copy.deepcopy(spec_overrides))
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DataRecorder",
        "metadata": {"name": name},
        "spec": spec,
    }


# The annotation that gives a Secret to DataRecorders (datarecorder_operator.spec's
# SECRET_MARK_ANNOTATION); "*": every DataRecorder of the namespace.
SECRET_MARK = "datarecorder.dev/recorders"


def create_tsdb_secret(k8s: K8s, namespace: str, recorders: str = "*") -> None:
    """The database password Secret MINIMAL_SPEC names, marked for `recorders`: under the
    restricted policy the operator renders pods that read only marked Secrets."""
    k8s.kubectl(
        "create", "secret", "generic", "tsdb", "-n", namespace, "--from-literal=password=pw"
    )
    k8s.kubectl("annotate", "secret", "tsdb", "-n", namespace, f"{SECRET_MARK}={recorders}")
