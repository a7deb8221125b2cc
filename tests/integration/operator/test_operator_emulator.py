"""The operator run by kopf's own runner against the kmock Kubernetes emulator.

What the emulator cannot show (no garbage collector, no Deployment controller, no schema or
CEL validation, no scale subresource semantics) is either done by the test in the
controller's place, said so at that step, or left to tests/integration/k8s on a real
control plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from datarecorder_operator.handlers import OperatorConfig
from datarecorder_operator.naming import child_name as name_of
from datarecorder_operator.workload import CONFIG_HASH_ANNOTATION

from tests.integration.operator.emulator import Cluster, running_operator
from tests.support.recorder_proc import free_port

pytestmark = pytest.mark.integration

NS = "md"
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget")


def recorder(name: str = "rec", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": "ghcr.io/example/datarecorder:0.1.0",
        # Nothing listens there: the lag poll fails fast and status says so (lagError).
        "kafka": {"brokers": ["127.0.0.1:1"], "topics": ["market.tick"]},
        "timescaledb": {"host": "db", "passwordSecret": {"name": "db"}},
    }
    body.update(spec)
    return {
        "apiVersion": "datarecorder.dev/v1alpha1",
        "kind": "DataRecorder",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def child_name(kind: str, name: str) -> str:
    return name_of(name, kind)


def condition(dr: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((dr or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return None


async def children(cluster: Cluster, name: str) -> dict[str, dict[str, Any]] | None:
    found = {}
    for kind in CHILD_KINDS:
        obj = await cluster.get(kind, NS, child_name(kind, name))
        if obj is None:
            return None
        found[kind] = obj
    return found


async def test_create_update_restore_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_operator(tmp_path, monkeypatch) as cluster:
        dr = await cluster.create(recorder())
        uid = dr["metadata"]["uid"]

        # Create -> every child exists, owned by the DataRecorder, with the rendered content.
        kids = await cluster.wait_for(lambda: children(cluster, "rec"), what="children")
        for kind, obj in kids.items():
            (ref,) = obj["metadata"]["ownerReferences"]
            assert ref["uid"] == uid and ref["kind"] == "DataRecorder", kind
            assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert kids["ConfigMap"]["data"]["KAFKA_TOPICS"] == "market.tick"
        assert kids["ConfigMap"]["data"]["BATCH_SIZE"] == "1000"
        assert "TIMESCALEDB_PASSWORD" not in kids["ConfigMap"]["data"]
        pod = kids["Deployment"]["spec"]["template"]
        assert pod["spec"]["containers"][0]["image"] == "ghcr.io/example/datarecorder:0.1.0"
        assert kids["Deployment"]["spec"]["replicas"] == 1
        hash1 = pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

        # Status: observedGeneration, the three conditions, selector for the scale subresource.
        async def status_seen() -> dict[str, Any] | None:
            obj = await cluster.get("DataRecorder", NS, "rec")
            st = (obj or {}).get("status") or {}
            return obj if st.get("observedGeneration") == 1 and condition(obj, "Ready") else None

        dr = await cluster.wait_for(status_seen, what="status of generation 1")
        assert {c["type"] for c in dr["status"]["conditions"]} == {
            "Ready",
            "Progressing",
            "Degraded",
            "LagAvailable",  # the lag is read (for status), and Kafka is unreachable here
        }
        assert condition(dr, "LagAvailable")["status"] == "False"  # type: ignore[index]
        assert condition(dr, "Degraded")["status"] == "False"  # type: ignore[index]
        assert condition(dr, "Ready")["status"] == "False"  # type: ignore[index]  # no pods yet
        assert (
            dr["status"]["selector"]
            == "app.kubernetes.io/component=recorder,app.kubernetes.io/instance=rec,"
            "app.kubernetes.io/name=datarecorder"
        )
        assert "cannot read lag" in dr["status"].get("lagError", "")

        # The emulator has no Deployment controller: report ready pods in its place.
        await cluster.patch(
            "Deployment", NS, "rec-recorder",
            {"status": {"observedGeneration": kids["Deployment"]["metadata"]["generation"],
                        "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}},
            sub="status",
        )  # fmt: skip

        async def ready() -> dict[str, Any] | None:
            obj = await cluster.get("DataRecorder", NS, "rec")
            cond = condition(obj, "Ready")
            return obj if cond and cond["status"] == "True" else None

        dr = await cluster.wait_for(ready, what="Ready=True")
        assert dr["status"]["readyReplicas"] == 1 and dr["status"]["replicas"] == 1

        # Spec change -> ConfigMap updated, pod template hash changed (pods roll), generation 2.
        await cluster.patch(
            "DataRecorder", NS, "rec", {"spec": {"batching": {"batchSize": 5000}, "replicas": 3}}
        )

        async def updated() -> dict[str, Any] | None:
            kids = await children(cluster, "rec")
            if kids and kids["ConfigMap"]["data"]["BATCH_SIZE"] == "5000":
                return kids
            return None

        kids = await cluster.wait_for(updated, what="ConfigMap update")
        pod = kids["Deployment"]["spec"]["template"]
        assert pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != hash1
        assert kids["Deployment"]["spec"]["replicas"] == 3

        async def generation2() -> bool:
            obj = await cluster.get("DataRecorder", NS, "rec")
            return ((obj or {}).get("status") or {}).get("observedGeneration") == 2

        await cluster.wait_for(generation2, what="observedGeneration 2")

        # Drift: a child deleted by hand comes back; a child edited by hand is restored.
        assert await cluster.delete("Service", NS, "rec-recorder") == 200
        await cluster.patch(
            "ConfigMap", NS, "rec-recorder-config", {"data": {"BATCH_SIZE": "1", "X": "y"}}
        )
        await cluster.patch(
            "Deployment", NS, "rec-recorder",
            {"spec": {"template": {"spec": {"containers": [{"name": "evil", "image": "x"}]}}}},
        )  # fmt: skip

        async def restored() -> bool:
            svc = await cluster.get("Service", NS, "rec-recorder")
            cm = await cluster.get("ConfigMap", NS, "rec-recorder-config")
            dep = await cluster.get("Deployment", NS, "rec-recorder")
            if not (svc and cm and dep):
                return False
            containers = dep["spec"]["template"]["spec"]["containers"]
            return (
                cm["data"].get("BATCH_SIZE") == "5000"
                and "X" not in cm["data"]
                and [c["name"] for c in containers] == ["recorder"]
            )

        await cluster.wait_for(restored, what="drift restored")
        svc = await cluster.get("Service", NS, "rec-recorder")
        assert svc["metadata"]["ownerReferences"][0]["uid"] == uid  # type: ignore[index]

        # Delete the DataRecorder -> children gone. The emulator has no garbage collector, so
        # this shows the operator's own cleanup (kopf's finalizer, then the delete handler);
        # the garbage collector's part is in tests/integration/k8s on a real control plane.
        assert await cluster.delete("DataRecorder", NS, "rec") == 200

        async def gone() -> bool:
            if await cluster.get("DataRecorder", NS, "rec") is not None:
                return False
            for kind in CHILD_KINDS:
                if await cluster.get(kind, NS, child_name(kind, "rec")) is not None:
                    return False
            return True

        await cluster.wait_for(gone, what="children deleted with their DataRecorder")


async def test_invalid_spec_is_degraded_without_a_crash_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_operator(tmp_path, monkeypatch) as cluster:
        bad = recorder(
            "bad", resources={"requests": {"memory": "4Gi"}, "limits": {"memory": "1Gi"}}
        )
        await cluster.create(bad)

        async def degraded() -> dict[str, Any] | None:
            obj = await cluster.get("DataRecorder", NS, "bad")
            cond = condition(obj, "Degraded")
            return cond if cond and cond["status"] == "True" else None

        cond = await cluster.wait_for(degraded, what="Degraded=True")
        assert cond["reason"] == "InvalidSpec"
        assert "spec.resources.requests.memory (4Gi) must not exceed" in cond["message"]
        assert await cluster.get("Deployment", NS, "bad-recorder") is None

        # The operator still serves other resources, and fixing the spec heals this one.
        await cluster.create(recorder("good"))
        await cluster.wait_for(lambda: children(cluster, "good"), what="children of good")
        await cluster.patch("DataRecorder", NS, "bad", {"spec": {"resources": None}})
        await cluster.wait_for(lambda: children(cluster, "bad"), what="children after the fix")

        async def healed() -> bool:
            obj = await cluster.get("DataRecorder", NS, "bad")
            cond = condition(obj, "Degraded")
            return bool(cond and cond["status"] == "False")

        await cluster.wait_for(healed, what="Degraded=False after the fix")


async def test_optional_children_follow_the_spec_and_the_crds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_operator(tmp_path, monkeypatch, service_monitors=True) as cluster:
        await cluster.create(
            recorder(
                "opt",
                autoscaling={"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 4},
                monitoring={"serviceMonitor": {"enabled": True, "interval": "15s"}},
            )
        )
        hpa = await cluster.wait_for(
            lambda: cluster.get("HorizontalPodAutoscaler", NS, "opt-recorder"), what="HPA"
        )
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "datarecorder_lag_records"
        sm = await cluster.wait_for(
            lambda: cluster.get("ServiceMonitor", NS, "opt-recorder"), what="SM"
        )
        assert sm["spec"]["endpoints"][0]["interval"] == "15s"
        dep = await cluster.wait_for(
            lambda: cluster.get("Deployment", NS, "opt-recorder"), what="dep"
        )
        assert dep["spec"]["replicas"] == 2  # starts at minReplicas

        # The HPA owns replicas: the operator leaves its choice alone on resync.
        await cluster.patch("Deployment", NS, "opt-recorder", {"spec": {"replicas": 4}})
        # Turning autoscaling and monitoring off removes those children.
        await cluster.patch(
            "DataRecorder", NS, "opt",
            {"spec": {"autoscaling": {"enabled": False}, "replicas": 1,
                      "monitoring": {"serviceMonitor": {"enabled": False}},
                      "podDisruptionBudget": {"enabled": False}}},
        )  # fmt: skip

        async def removed() -> bool:
            return all(
                [
                    await cluster.get("HorizontalPodAutoscaler", NS, "opt-recorder") is None,
                    await cluster.get("ServiceMonitor", NS, "opt-recorder") is None,
                    await cluster.get("PodDisruptionBudget", NS, "opt-recorder") is None,
                ]
            )

        await cluster.wait_for(removed, what="optional children removed")
        dep = await cluster.get("Deployment", NS, "opt-recorder")
        assert dep["spec"]["replicas"] == 1  # type: ignore[index]


async def test_no_service_monitor_without_its_crd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_operator(tmp_path, monkeypatch, service_monitors=False) as cluster:
        await cluster.create(recorder("nosm", monitoring={"serviceMonitor": {"enabled": True}}))
        await cluster.wait_for(lambda: children(cluster, "nosm"), what="children")

        async def reconciled() -> bool:
            obj = await cluster.get("DataRecorder", NS, "nosm")
            return condition(obj, "Ready") is not None

        await cluster.wait_for(reconciled, what="status")
        requests = [str(r.url.path) for r in list(cluster.emulator)]
        assert "/apis/monitoring.coreos.com/v1" in requests  # it asked discovery
        assert not any("servicemonitors" in p for p in requests)  # and never touched them


async def test_lag_failures_fall_back_and_show_in_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka unreachable: after failureThreshold failed reads the operator runs the fallback
    replicas (KEDA's rule), says LagAvailable=False, and counts all of it on /metrics."""
    port = free_port()
    config = OperatorConfig(
        tick_seconds=0.3, resync_seconds=0.5, kafka_timeout_seconds=2, metrics_port=port
    )
    scaling = {
        "enabled": True,
        "mode": "operator",
        "minReplicas": 1,
        "maxReplicas": 5,
        "pollIntervalSeconds": 1,
        "fallback": {"failureThreshold": 2, "replicas": 3},
    }
    async with running_operator(tmp_path, monkeypatch, config=config) as cluster:
        await cluster.create(recorder("fb", autoscaling=scaling))

        async def fell_back() -> bool:
            dep = await cluster.get("Deployment", NS, "fb-recorder")
            return bool(dep and dep["spec"].get("replicas") == 3)

        await cluster.wait_for(fell_back, within=30, what="the fallback replicas")
        dr = await cluster.get("DataRecorder", NS, "fb")
        assert condition(dr, "LagAvailable")["status"] == "False"  # type: ignore[index]
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        assert 'datarecorder_operator_lag_reads_total{result="error"}' in text
        assert (
            'datarecorder_operator_scale_decisions_total{direction="up",reason="fallback"}' in text
        )
        assert 'datarecorder_operator_reconciles_total{result="ok",trigger="handler"}' in text
