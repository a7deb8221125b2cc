"""The datarecorder operator run for real (`python -m datarecorder_operator run`) on scripts/k8s.

Owns the end-to-end checks of children, owner references, rollouts, drift repair, scaling and
garbage collection against a real API server, controller-manager, scheduler and kwok node.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

SELECTOR = (
    "app.kubernetes.io/name=datarecorder,app.kubernetes.io/instance={},"
    "app.kubernetes.io/component=recorder"
)
CHILDREN = ("deployment", "service", "configmap", "poddisruptionbudget", "horizontalpodautoscaler")


@pytest.fixture(scope="module")
def operator(k8s: K8s, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """A running operator watching its own namespace (the module's tests share both)."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    create_tsdb_secret(k8s, name)
    op = Operator(k8s, name, tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        op.wait_alive()
        yield op
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
        op.assert_no_traceback_while_running()


@pytest.fixture(scope="module")
def operator_ns(operator: Operator) -> str:
    return operator.namespace


def _children(k8s: K8s, ns: str, name: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in CHILDREN:
        items = k8s.get_json(kind, "-l", SELECTOR.format(name), namespace=ns)["items"]
        for item in items:
            out[f"{item['kind']}/{item['metadata']['name']}"] = item
    return out


def _labels(selector: str) -> set[str]:
    return set(selector.split(","))


def _ready(k8s: K8s, ns: str, name: str, replicas: int) -> dict[str, Any] | None:
    dr = k8s.get_json("datarecorder", name, namespace=ns)
    status = dr.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    ok = (
        status.get("observedGeneration") == dr["metadata"]["generation"]
        and status.get("readyReplicas") == replicas
        and conditions.get("Ready") == "True"
    )
    return dr if ok else None


def _replicasets(k8s: K8s, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k8s.get_json("rs", "-l", SELECTOR.format(name), namespace=ns)[
        "items"
    ]
    return items


def test_datarecorder_gets_owned_children_and_ready_status(k8s: K8s, operator_ns: str) -> None:
    k8s.apply(data_recorder("rec", replicas=2), operator_ns)
    dr = wait_for(
        lambda: _ready(k8s, operator_ns, "rec", 2), timeout=90, what="DataRecorder rec Ready"
    )
    children = _children(k8s, operator_ns, "rec")
    assert set(children) == {
        "Deployment/rec-recorder",
        "Service/rec-recorder",
        "ConfigMap/rec-recorder-config",
        "PodDisruptionBudget/rec-recorder",
    }
    for key, child in children.items():
        refs = child["metadata"].get("ownerReferences") or []
        assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [
            ("DataRecorder", "rec", dr["metadata"]["uid"], True)
        ], key
    pods = k8s.get_json("pods", "-l", SELECTOR.format("rec"), namespace=operator_ns)["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
    assert _labels(dr["status"]["selector"]) == _labels(SELECTOR.format("rec"))
    # The printer columns read the operator's status.
    row = k8s.kubectl(
        "get", "-n", operator_ns, "datarecorder", "rec", "--no-headers"
    ).stdout.split()
    assert row[:3] == ["rec", "True", "2"]


def test_probes_and_grace_period_as_stored_by_the_api_server(k8s: K8s, operator_ns: str) -> None:
    """Liveness on /live (never a store), a startupProbe before it, readiness on the stores,
    and the SIGKILL deadline derived from the recorder's own shutdown deadline."""
    k8s.apply(data_recorder("probes", shutdownTimeoutSeconds=90), operator_ns)
    wait_for(lambda: _ready(k8s, operator_ns, "probes", 1), timeout=90, what="probes Ready")
    pod = k8s.get_json("deploy", "probes-recorder", namespace=operator_ns)["spec"]["template"][
        "spec"
    ]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/live"
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 300
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["terminationGracePeriodSeconds"] == 105
    config = k8s.get_json("configmap", "probes-recorder-config", namespace=operator_ns)["data"]
    assert config["SHUTDOWN_TIMEOUT_SEC"] == "90"
    service = k8s.get_json("service", "probes-recorder", namespace=operator_ns)
    assert service["spec"]["publishNotReadyAddresses"] is True  # unready pods keep /metrics


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What an operator write would change: everything but status and bookkeeping."""
    meta = {
        k: v
        for k, v in obj["metadata"].items()
        if k not in ("resourceVersion", "managedFields", "generation")
    }
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


STEADY_CASES = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {"autoscaling": {"enabled": True, "mode": "hpa", "minReplicas": 1, "maxReplicas": 3}},
        id="hpa",
    ),
    pytest.param(
        {"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "1000m"}}},
        id="non-canonical-quantities",
    ),
]


@pytest.mark.parametrize("overrides", STEADY_CASES)
def test_steady_state_makes_no_writes(
    k8s: K8s, operator: Operator, overrides: dict[str, Any]
) -> None:
    """Resyncs every 2 s must find nothing to change once the server filled in its defaults
    and canonicalized what it stores (quantities, defaulted fields)."""
    ns = operator.namespace
    name = f"steady-{len(overrides)}-{uuid.uuid4().hex[:4]}"
    k8s.apply(data_recorder(name, **overrides), ns)
    wait_for(lambda: _ready(k8s, ns, name, 1), timeout=90, what=f"{name} Ready")
    time.sleep(2)  # let the first resync settle
    before = _children(k8s, ns, name)
    log_mark = len(operator.log())
    time.sleep(5)  # two and a half resync periods (--resync 2)
    after = _children(k8s, ns, name)
    writes = [
        line
        for line in operator.log()[log_mark:].splitlines()
        if re.search(rf"\b(applied|patched|restored|created) \w+ {name}\b", line)
    ]
    assert not writes, "the operator keeps writing:\n" + "\n".join(writes[:10])
    assert set(before) == set(after)
    changed = {k: after[k]["metadata"]["managedFields"] for k in before
               if _content(before[k]) != _content(after[k])
               or before[k]["metadata"].get("generation") != after[k]["metadata"].get("generation")}  # fmt: skip
    assert not changed, f"the operator keeps rewriting: {json.dumps(changed, indent=1)}"


def test_spec_change_rolls_a_new_replicaset(k8s: K8s, operator_ns: str) -> None:
    k8s.apply(data_recorder("roll"), operator_ns)
    wait_for(lambda: _ready(k8s, operator_ns, "roll", 1), timeout=90, what="roll Ready")
    first = _replicasets(k8s, operator_ns, "roll")
    assert len(first) == 1
    old_pods = {
        p["metadata"]["name"]
        for p in k8s.get_json("pods", "-l", SELECTOR.format("roll"), namespace=operator_ns)["items"]
    }

    k8s.kubectl(
        "patch", "-n", operator_ns, "datarecorder", "roll", "--type=merge",
        "-p", json.dumps({"spec": {"logLevel": "DEBUG"}}),
    )  # fmt: skip

    def rolled() -> bool:
        rss = _replicasets(k8s, operator_ns, "roll")
        if len(rss) != 2:
            return False
        new = [rs for rs in rss if rs["metadata"]["name"] != first[0]["metadata"]["name"]]
        return bool(new and (new[0].get("status") or {}).get("readyReplicas") == 1) and all(
            rs["spec"]["replicas"] == 0 for rs in rss if rs not in new
        )

    wait_for(rolled, timeout=90, what="a second ReplicaSet to take over after the spec change")
    dr = wait_for(lambda: _ready(k8s, operator_ns, "roll", 1), timeout=90, what="roll Ready again")
    assert dr["status"]["observedGeneration"] == 2
    config = k8s.get_json("configmap", "roll-recorder-config", namespace=operator_ns)["data"]
    assert "DEBUG" in config.values()

    def replaced() -> bool:
        pods = k8s.get_json("pods", "-l", SELECTOR.format("roll"), namespace=operator_ns)["items"]
        names = {p["metadata"]["name"] for p in pods}
        return bool(names) and not names & old_pods

    wait_for(replaced, timeout=90, what="the old pods to be replaced")


@pytest.mark.parametrize("kind", ["service", "configmap", "deployment"])
def test_deleted_child_is_restored(k8s: K8s, operator_ns: str, kind: str) -> None:
    name = f"restore-{kind[:3]}"
    child = f"{name}-recorder-config" if kind == "configmap" else f"{name}-recorder"
    k8s.apply(data_recorder(name), operator_ns)
    wait_for(lambda: _ready(k8s, operator_ns, name, 1), timeout=90, what=f"{name} Ready")
    old_uid = k8s.get_json(kind, child, namespace=operator_ns)["metadata"]["uid"]

    k8s.kubectl("delete", "-n", operator_ns, kind, child, "--wait=true")

    def restored() -> bool:
        proc = k8s.kubectl("get", "-n", operator_ns, kind, child, "-o", "json", check=False)
        return proc.returncode == 0 and json.loads(proc.stdout)["metadata"]["uid"] != old_uid

    wait_for(restored, timeout=60, what=f"{kind} {child} to be re-created")
    wait_for(lambda: _ready(k8s, operator_ns, name, 1), timeout=90, what=f"{name} Ready again")


def test_drifted_deployment_replicas_are_restored(k8s: K8s, operator_ns: str) -> None:
    k8s.apply(data_recorder("drift"), operator_ns)
    wait_for(lambda: _ready(k8s, operator_ns, "drift", 1), timeout=90, what="drift Ready")
    k8s.kubectl("scale", "-n", operator_ns, "deploy", "drift-recorder", "--replicas=4")
    wait_for(
        lambda: (
            k8s.get_json("deploy", "drift-recorder", namespace=operator_ns)["spec"]["replicas"] == 1
        ),
        timeout=60,
        what="the operator to scale Deployment drift-recorder back to spec.replicas=1",
    )


def test_kubectl_scale_datarecorder_scales_the_recorders(k8s: K8s, operator_ns: str) -> None:
    k8s.apply(data_recorder("scaled"), operator_ns)
    wait_for(lambda: _ready(k8s, operator_ns, "scaled", 1), timeout=90, what="scaled Ready")
    k8s.kubectl("scale", "-n", operator_ns, "datarecorder", "scaled", "--replicas=3")
    wait_for(lambda: _ready(k8s, operator_ns, "scaled", 3), timeout=90, what="3 ready recorders")
    scale = json.loads(
        k8s.kubectl(
            "get", "--raw",
            f"/apis/datarecorder.dev/v1alpha1/namespaces/{operator_ns}/datarecorders/scaled/scale",
        ).stdout
    )  # fmt: skip
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert _labels(scale["status"]["selector"]) == _labels(SELECTOR.format("scaled"))


def test_deleted_datarecorder_takes_its_children_and_pods(k8s: K8s, operator_ns: str) -> None:
    k8s.apply(data_recorder("gone", replicas=2), operator_ns)
    wait_for(lambda: _ready(k8s, operator_ns, "gone", 2), timeout=90, what="gone Ready")
    k8s.kubectl("delete", "-n", operator_ns, "datarecorder", "gone", "--wait=true", "--timeout=60s")

    def empty() -> bool:
        left = k8s.kubectl(
            "get", "-n", operator_ns, "deploy,rs,pods,svc,cm,pdb",
            "-l", SELECTOR.format("gone"), "-o", "name",
        ).stdout.split()  # fmt: skip
        cm = k8s.kubectl("get", "-n", operator_ns, "cm", "gone-recorder-config", check=False)
        return not left and cm.returncode != 0

    wait_for(empty, timeout=90, what="every child, ReplicaSet and pod of gone to be deleted")
