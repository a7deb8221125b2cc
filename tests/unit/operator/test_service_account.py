"""spec.serviceAccount: an annotated ServiceAccount child for workload identity, rendered before
the Deployment that uses it (on the API server: tests/integration/k8s/test_operator_secrets.py)."""

from __future__ import annotations

from typing import Any

import pytest
from datarecorder_operator import rendering, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SpecError

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
GKE = {"iam.gke.io/gcp-service-account": "lake@project.iam.gserviceaccount.com"}


def test_annotations_make_a_service_account_the_pods_use() -> None:
    spec = parse_spec("rec", "md", {**BASE, "serviceAccount": {"annotations": GKE}})
    kinds = [m["kind"] for m in rendering.render_children(spec)]
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    (sa,) = [m for m in rendering.render_children(spec) if m["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == "rec-recorder" and sa["metadata"]["annotations"] == GKE
    assert sa["automountServiceAccountToken"] is False
    deployment = workload.render_deployment(spec, 1)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "rec-recorder"


def test_without_it_no_service_account_is_made() -> None:
    spec = parse_spec("rec", "md", BASE)
    assert "ServiceAccount" not in [m["kind"] for m in rendering.render_children(spec)]
    assert workload.service_account_name(spec) == "default"


def test_it_excludes_a_service_account_of_your_own() -> None:
    with pytest.raises(SpecError, match="exclude each other"):
        parse_spec("rec", "md", {**BASE, "serviceAccount": {}, "serviceAccountName": "mine"})
