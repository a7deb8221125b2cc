"""DataRecorder's status and scale subresources and printer columns on the real kube-apiserver.

Owns the checks of what kubectl and the server do with the CRD's subresource declarations.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.k8s import K8s
from tests.integration.k8s.manifests import data_recorder

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


def _patch_status(k8s: K8s, namespace: str, name: str, status: dict[str, object]) -> None:
    k8s.kubectl(
        "patch", "-n", namespace, "datarecorder", name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def test_status_is_a_subresource_and_does_not_bump_generation(k8s: K8s, k8s_namespace: str) -> None:
    k8s.apply(data_recorder("st"), k8s_namespace)
    before = k8s.get_json("datarecorder", "st", namespace=k8s_namespace)
    assert before["metadata"]["generation"] == 1

    # Status written through the main resource is dropped by the server.
    k8s.kubectl(
        "patch", "-n", k8s_namespace, "datarecorder", "st", "--type=merge",
        "-p", json.dumps({"status": {"replicas": 9}}),
    )  # fmt: skip
    assert "status" not in k8s.get_json("datarecorder", "st", namespace=k8s_namespace)

    _patch_status(k8s, k8s_namespace, "st", {"observedGeneration": 1, "replicas": 2})
    after_status = k8s.get_json("datarecorder", "st", namespace=k8s_namespace)
    assert after_status["status"] == {"observedGeneration": 1, "replicas": 2}
    assert after_status["metadata"]["generation"] == 1  # status writes keep the generation

    # Spec written through /status is ignored; a spec change through the resource bumps it.
    k8s.kubectl(
        "patch", "-n", k8s_namespace, "datarecorder", "st", "--subresource=status", "--type=merge",
        "-p", json.dumps({"spec": {"replicas": 4}}),
    )  # fmt: skip
    assert k8s.get_json("datarecorder", "st", namespace=k8s_namespace)["spec"]["replicas"] == 1
    k8s.kubectl(
        "patch", "-n", k8s_namespace, "datarecorder", "st", "--type=merge",
        "-p", json.dumps({"spec": {"replicas": 4}}),
    )  # fmt: skip
    assert (
        k8s.get_json("datarecorder", "st", namespace=k8s_namespace)["metadata"]["generation"] == 2
    )


def test_status_is_validated_against_the_schema(k8s: K8s, k8s_namespace: str) -> None:
    k8s.apply(data_recorder("badstatus"), k8s_namespace)
    proc = k8s.kubectl(
        "patch", "-n", k8s_namespace, "datarecorder", "badstatus", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": [{"type": "Ready", "status": "Yes"}]}}),
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert 'status.conditions[0].status: Unsupported value: "Yes"' in proc.stderr


def test_printer_columns_show_status_fields(k8s: K8s, k8s_namespace: str) -> None:
    k8s.apply(data_recorder("cols"), k8s_namespace)
    _patch_status(
        k8s,
        k8s_namespace,
        "cols",
        {
            "replicas": 3,
            "lag": {"timescaledb": 4242},
            "state": "stopped",
            # Typed like metav1.Condition: reason, message and lastTransitionTime are required.
            "conditions": [
                {
                    "type": t,
                    "status": v,
                    "reason": "Test",
                    "message": "set by the test",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
                for t, v in (("Progressing", "False"), ("Ready", "True"))
            ],
        },
    )
    lines = k8s.kubectl("get", "-n", k8s_namespace, "datarecorder", "cols").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "REPLICAS", "LAG", "STATE", "AGE"]
    name, ready, replicas, lag, state, _age = lines[1].split()
    assert (name, ready, replicas, lag, state) == ("cols", "True", "3", "4242", "stopped")
    # Not in the "all" category: `kubectl delete all --all` must not take recorders with it.
    listed = k8s.kubectl("get", "-n", k8s_namespace, "all", "-o", "name").stdout.split()
    assert "datarecorder.datarecorder.dev/cols" not in listed
    assert k8s.kubectl("get", "-n", k8s_namespace, "drec", "cols").returncode == 0


def test_kubectl_scale_writes_spec_replicas_through_the_scale_subresource(
    k8s: K8s, k8s_namespace: str
) -> None:
    k8s.apply(data_recorder("sc"), k8s_namespace)
    _patch_status(k8s, k8s_namespace, "sc", {"replicas": 1, "selector": "app=sc"})

    k8s.kubectl("scale", "-n", k8s_namespace, "datarecorder", "sc", "--replicas=3")
    assert k8s.get_json("datarecorder", "sc", namespace=k8s_namespace)["spec"]["replicas"] == 3

    scale = json.loads(
        k8s.kubectl(
            "get", "--raw",
            f"/apis/datarecorder.dev/v1alpha1/namespaces/{k8s_namespace}/datarecorders/sc/scale",
        ).stdout
    )  # fmt: skip
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 1, "selector": "app=sc"}

    # The scale write is checked against the CRD schema (maximum: 1000) like any spec write.
    proc = k8s.kubectl(
        "scale", "-n", k8s_namespace, "datarecorder", "sc", "--replicas=1001", check=False
    )
    assert proc.returncode != 0
    assert "should be less than or equal to 1000" in proc.stderr
    assert k8s.get_json("datarecorder", "sc", namespace=k8s_namespace)["spec"]["replicas"] == 3

    # --current-replicas is a precondition the server checks (optimistic concurrency).
    proc = k8s.kubectl(
        "scale", "-n", k8s_namespace, "datarecorder", "sc", "--current-replicas=2", "--replicas=5",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert k8s.get_json("datarecorder", "sc", namespace=k8s_namespace)["spec"]["replicas"] == 3
