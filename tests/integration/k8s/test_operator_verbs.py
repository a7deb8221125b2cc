"""Strimzi's and KEDA's verbs on scripts/k8s: spec.state stopped / running, the restart
annotation, and the operator's own metrics, with the operator run for real.

Owns the checks that a stopped recorder stays at 0 replicas while an HPA or the operator's own
scaler would scale it, that running again restores the replicas, and that the pods roll once
per restart value, across an operator restart too.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
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
RESTART = "datarecorder.dev/restart"
BEFORE_STOP = "datarecorder.dev/replicas-before-stop"
RESYNC_OK = re.compile(
    r'^datarecorder_operator_reconciles_total\{result="ok",trigger="resync"\} (\S+)$', re.M
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MeteredOperator:
    """An operator process serving /metrics, restartable on the same namespace."""

    def __init__(self, k8s: K8s, namespace: str, logs: Path) -> None:
        self.k8s, self.namespace, self.logs = k8s, namespace, logs
        self.runs = 0
        self.proc: Operator | None = None
        self.metrics_url = ""

    def start(self) -> None:
        self.runs += 1
        port = _free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.proc = Operator(
            self.k8s,
            self.namespace,
            self.logs / f"operator-{self.runs}.log",
            extra_args=("--metrics-port", str(port)),
        )
        self.proc.wait_alive()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc.assert_no_traceback_while_running()
            self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def resync_passes(self) -> float:
        match = RESYNC_OK.search(self.metrics())
        return float(match.group(1)) if match else 0.0

    def wait_passes(self, count: int) -> None:
        """Wait until the loop has made `count` more successful passes (over every recorder of
        the namespace): what held after them held through several resyncs."""
        start = self.resync_passes()
        wait_for(
            lambda: self.resync_passes() >= start + count,
            timeout=60,
            what=f"{count} more successful resync passes in the operator's metrics",
        )


@pytest.fixture
def operator(k8s: K8s, tmp_path: Path) -> Iterator[MeteredOperator]:
    name = f"vb-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    create_tsdb_secret(k8s, name)
    op = MeteredOperator(k8s, name, tmp_path)
    try:
        op.start()
        yield op
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _deployment(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    proc = k8s.kubectl("get", "-n", ns, "deploy", f"{name}-recorder", "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    found: dict[str, Any] = json.loads(proc.stdout)
    return found


def _replicas(k8s: K8s, ns: str, name: str) -> int | None:
    deployment = _deployment(k8s, ns, name)
    return None if deployment is None else int(deployment["spec"].get("replicas", 1))


def _hpa_exists(k8s: K8s, ns: str, name: str) -> bool:
    proc = k8s.kubectl("get", "-n", ns, "hpa", f"{name}-recorder", check=False)
    return proc.returncode == 0


def _status(k8s: K8s, ns: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = k8s.get_json("datarecorder", name, namespace=ns).get("status") or {}
    return found


def _condition(status: dict[str, Any], ctype: str) -> tuple[str, str] | None:
    for cond in status.get("conditions") or []:
        if cond["type"] == ctype:
            return cond["status"], cond["reason"]
    return None


def _printed(k8s: K8s, ns: str, name: str) -> dict[str, str]:
    """`kubectl get datarecorder` as the printer columns show it, by header (an empty cell
    would shift a plain split)."""
    header, row = k8s.kubectl("get", "-n", ns, "datarecorder", name).stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def _set_state(k8s: K8s, ns: str, name: str, state: str) -> None:
    patch = json.dumps({"spec": {"state": state}})
    k8s.kubectl("patch", "datarecorder", name, "-n", ns, "--type=merge", "-p", patch)


def _until(probe: Callable[[], bool], what: str, timeout: float = 90) -> None:
    wait_for(probe, timeout=timeout, what=what)


def test_stopped_stays_at_zero_under_an_hpa_and_running_restores(
    k8s: K8s, operator: MeteredOperator
) -> None:
    ns = operator.namespace
    auto = {"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 4}
    k8s.apply(data_recorder("auto", autoscaling=auto), ns)
    _until(lambda: _replicas(k8s, ns, "auto") == 2 and _hpa_exists(k8s, ns, "auto"), "HPA + 2")
    # The autoscaler has scaled it (kubectl scale writes the scale subresource as the HPA does):
    # the field is no longer the operator's.
    k8s.kubectl("scale", "deploy", "auto-recorder", "-n", ns, "--replicas=3")

    _set_state(k8s, ns, "auto", "stopped")
    _until(lambda: _replicas(k8s, ns, "auto") == 0, "the Deployment scaled to 0 by the stop")
    _until(lambda: not _hpa_exists(k8s, ns, "auto"), "the HPA removed while stopped")
    deployment = _deployment(k8s, ns, "auto")
    assert deployment is not None
    assert deployment["metadata"]["annotations"][BEFORE_STOP] == "3"

    def stopped_status() -> bool:
        status = _status(k8s, ns, "auto")
        return status.get("state") == "stopped" and _condition(status, "Ready") == (
            "True",
            "Stopped",
        )

    _until(stopped_status, "status.state stopped and Ready=True reason Stopped")
    columns = _printed(k8s, ns, "auto")
    assert (columns["READY"], columns["REPLICAS"], columns["STATE"]) == ("True", "0", "stopped")
    assert 'datarecorder_operator_recorders{state="stopped"} 1.0' in operator.metrics()

    # Something scales it up again (a leftover autoscaler, a person): the operator takes it back
    # to 0, and it stays there through several passes, with no HPA coming back.
    k8s.kubectl("scale", "deploy", "auto-recorder", "-n", ns, "--replicas=2")
    _until(lambda: _replicas(k8s, ns, "auto") == 0, "the stopped Deployment back at 0")
    operator.wait_passes(4)
    assert _replicas(k8s, ns, "auto") == 0 and not _hpa_exists(k8s, ns, "auto")

    _set_state(k8s, ns, "auto", "running")
    _until(lambda: _replicas(k8s, ns, "auto") == 3, "the replicas from before the stop (3)")
    _until(lambda: _hpa_exists(k8s, ns, "auto"), "the HPA back")
    _until(lambda: _status(k8s, ns, "auto").get("state") == "running", "status.state running")
    deployment = _deployment(k8s, ns, "auto")
    assert deployment is not None
    assert BEFORE_STOP not in (deployment["metadata"].get("annotations") or {})


def test_stopped_in_mode_operator_is_not_scaled_by_its_fallback(
    k8s: K8s, operator: MeteredOperator
) -> None:
    """Lag reads fail (no broker there), and KEDA's fallback asks for 3 replicas after one
    failure: stopped, the operator's scaler leaves the Deployment at 0; running, it scales."""
    ns = operator.namespace
    auto = {
        "enabled": True,
        "mode": "operator",
        "minReplicas": 1,
        "maxReplicas": 4,
        "pollIntervalSeconds": 1,
        "fallback": {"failureThreshold": 1, "replicas": 3},
    }
    k8s.apply(
        data_recorder(
            "fallback",
            state="stopped",
            autoscaling=auto,
            kafka={"brokers": ["127.0.0.1:1"]},
        ),
        ns,
    )
    _until(lambda: _replicas(k8s, ns, "fallback") == 0, "a stopped Deployment created at 0")
    _until(
        lambda: (
            _condition(_status(k8s, ns, "fallback"), "LagAvailable")
            == (
                "False",
                "LagReadFailed",
            )
        ),
        "the failed lag reads in the status",
    )
    operator.wait_passes(4)
    assert _replicas(k8s, ns, "fallback") == 0
    _set_state(k8s, ns, "fallback", "running")
    _until(lambda: _replicas(k8s, ns, "fallback") == 3, "the fallback's 3 replicas once running")


def _replicasets(k8s: K8s, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k8s.get_json("rs", "-l", SELECTOR.format(name), namespace=ns)[
        "items"
    ]
    return items


def _template_restart(k8s: K8s, ns: str, name: str) -> str | None:
    deployment = _deployment(k8s, ns, name)
    annotations = (deployment or {}).get("spec", {}).get("template", {}).get("metadata", {})
    value = (annotations.get("annotations") or {}).get(RESTART)
    return None if value is None else str(value)


def _annotate(k8s: K8s, ns: str, name: str, *args: str) -> None:
    k8s.kubectl("annotate", "datarecorder", name, "-n", ns, "--overwrite", *args)


def test_restart_annotation_rolls_once_per_value_across_operator_restarts(
    k8s: K8s, operator: MeteredOperator
) -> None:
    ns = operator.namespace
    k8s.apply(data_recorder("roll"), ns)
    _until(lambda: len(_replicasets(k8s, ns, "roll")) == 1, "the first ReplicaSet")
    assert _template_restart(k8s, ns, "roll") is None

    _annotate(k8s, ns, "roll", f"{RESTART}=first")
    _until(lambda: _template_restart(k8s, ns, "roll") == "first", "the value on the pod template")
    _until(lambda: len(_replicasets(k8s, ns, "roll")) == 2, "one rollout (a second ReplicaSet)")
    _until(
        lambda: (_status(k8s, ns, "roll").get("lastRestart") or {}).get("value") == "first",
        "status.lastRestart",
    )
    recorded = _status(k8s, ns, "roll")["lastRestart"]
    events = k8s.get_json("events", "--field-selector=reason=Restarted", namespace=ns)["items"]
    assert [e["involvedObject"]["name"] for e in events] == ["roll"]

    # The same value through more passes and a new operator process: no second rollout.
    operator.wait_passes(3)
    operator.stop()
    operator.start()
    operator.wait_passes(3)
    assert len(_replicasets(k8s, ns, "roll")) == 2
    assert _status(k8s, ns, "roll")["lastRestart"] == recorded

    # Removing the annotation does not roll the pods either: the template keeps the value.
    _annotate(k8s, ns, "roll", f"{RESTART}-")
    operator.wait_passes(3)
    assert _template_restart(k8s, ns, "roll") == "first"
    assert len(_replicasets(k8s, ns, "roll")) == 2

    _annotate(k8s, ns, "roll", f"{RESTART}=second")
    _until(lambda: len(_replicasets(k8s, ns, "roll")) == 3, "a second rollout for a new value")
    _until(
        lambda: (_status(k8s, ns, "roll").get("lastRestart") or {}).get("value") == "second",
        "status.lastRestart of the second value",
    )


def _template_hash(k8s: K8s, ns: str, name: str) -> str | None:
    deployment = _deployment(k8s, ns, name) or {}
    template = deployment.get("spec", {}).get("template", {}).get("metadata", {})
    value = (template.get("annotations") or {}).get("datarecorder.dev/config-hash")
    return None if value is None else str(value)


def _config(k8s: K8s, ns: str, name: str) -> dict[str, str]:
    found = k8s.get_json("configmap", f"{name}-recorder-config", namespace=ns)
    data: dict[str, str] = found.get("data") or {}
    return data


def test_paused_keeps_the_pods_with_paused_true_and_no_autoscaling(
    k8s: K8s, operator: MeteredOperator
) -> None:
    """Paused: the same pods' count, rolled into PAUSED=true (all at once: a paused pod is never
    ready), no HPA, Ready=False reason Paused; running again drops PAUSED and brings the HPA
    back. (kwok's pods report Ready whatever /ready says: the recorder's side of the pause is
    tests/integration/recorder/test_paused.py.)"""
    ns = operator.namespace
    auto = {"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 4}
    k8s.apply(data_recorder("pause", autoscaling=auto), ns)
    _until(lambda: _replicas(k8s, ns, "pause") == 2 and _hpa_exists(k8s, ns, "pause"), "HPA + 2")
    _until(lambda: len(_replicasets(k8s, ns, "pause")) == 1, "the first ReplicaSet")
    assert "PAUSED" not in _config(k8s, ns, "pause")
    running_hash = _template_hash(k8s, ns, "pause")

    _set_state(k8s, ns, "pause", "paused")
    _until(lambda: _config(k8s, ns, "pause").get("PAUSED") == "true", "PAUSED=true in the config")
    _until(lambda: not _hpa_exists(k8s, ns, "pause"), "the HPA removed while paused")
    _until(lambda: len(_replicasets(k8s, ns, "pause")) == 2, "the pods rolled into the pause")

    def paused_status() -> bool:
        status = _status(k8s, ns, "pause")
        return status.get("state") == "paused" and _condition(status, "Ready") == (
            "False",
            "Paused",
        )

    _until(paused_status, "status.state paused and Ready=False reason Paused")
    deployment = _deployment(k8s, ns, "pause")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2  # the pods stay
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (0, "100%")
    assert BEFORE_STOP not in (deployment["metadata"].get("annotations") or {})
    columns = _printed(k8s, ns, "pause")
    assert (columns["READY"], columns["STATE"]) == ("False", "paused")
    assert 'datarecorder_operator_recorders{state="paused"} 1.0' in operator.metrics()
    operator.wait_passes(3)
    assert not _hpa_exists(k8s, ns, "pause") and _replicas(k8s, ns, "pause") == 2

    _set_state(k8s, ns, "pause", "running")
    _until(lambda: "PAUSED" not in _config(k8s, ns, "pause"), "PAUSED dropped from the config")
    _until(lambda: _hpa_exists(k8s, ns, "pause"), "the HPA back")
    # The running template again: the Deployment scales the first ReplicaSet back up.
    _until(
        lambda: _template_hash(k8s, ns, "pause") == running_hash, "the pods rolled out of the pause"
    )
    assert len(_replicasets(k8s, ns, "pause")) == 2
    _until(
        lambda: _condition(_status(k8s, ns, "pause"), "Ready") == ("True", "RecordersReady"),
        "Ready again once running",
    )


RESET = "datarecorder.dev/reset-to-time"
RESET_TIME = "2026-12-01T00:00:00Z"


def _annotations(k8s: K8s, ns: str, name: str) -> dict[str, str]:
    found = k8s.get_json("datarecorder", name, namespace=ns)
    annotations: dict[str, str] = found["metadata"].get("annotations") or {}
    return annotations


def _jobs(k8s: K8s, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k8s.get_json("jobs", namespace=ns)["items"]
    return items


def _event_reasons(k8s: K8s, ns: str, name: str) -> list[str]:
    events = k8s.get_json("events", namespace=ns)["items"]
    ordered = sorted(events, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or "")
    return [e["reason"] for e in ordered if e["involvedObject"]["name"] == name]


def test_reset_to_time_stops_runs_the_job_records_and_restores(
    k8s: K8s, operator: MeteredOperator
) -> None:
    """The annotation: recorders scaled to 0, then a Job with the recorder's pod runs
    reset-progress --to-time per topic (kwok completes it), the outcome lands in
    status.lastReset, the annotation goes and the replicas come back."""
    ns = operator.namespace
    k8s.apply(data_recorder("rst", replicas=2), ns)
    _until(lambda: _replicas(k8s, ns, "rst") == 2, "2 recorders")
    _annotate(k8s, ns, "rst", f"{RESET}={RESET_TIME}")
    _until(lambda: _replicas(k8s, ns, "rst") == 0, "the recorders stopped for the reset")
    _until(lambda: len(_jobs(k8s, ns)) == 1, "the reset Job, once the pods are gone")

    def finished() -> bool:
        last = _status(k8s, ns, "rst").get("lastReset") or {}
        return last.get("outcome") == "Succeeded"

    _until(finished, "status.lastReset Succeeded", timeout=120)
    status = _status(k8s, ns, "rst")
    last = status["lastReset"]
    assert (last["time"], last["job"]) == (RESET_TIME, _jobs(k8s, ns)[0]["metadata"]["name"])
    assert status.get("reset") is None
    _until(lambda: RESET not in _annotations(k8s, ns, "rst"), "the annotation removed")
    _until(lambda: _replicas(k8s, ns, "rst") == 2, "the recorders back (state restored)")
    _until(
        lambda: _condition(_status(k8s, ns, "rst"), "Ready") == ("True", "RecordersReady"),
        "Ready again",
    )

    # The Job is the recorder's pod running the command, topic after topic.
    job = _jobs(k8s, ns)[0]
    pod = job["spec"]["template"]["spec"]
    deployment = _deployment(k8s, ns, "rst")
    assert deployment is not None
    recorder = deployment["spec"]["template"]["spec"]
    commands = [c["command"] for c in pod["initContainers"] + pod["containers"]]
    assert commands == [
        ["datarecorder", "reset-progress", "--topic", t, "--to-time", RESET_TIME, "--apply"]
        for t in ("market.tick", "market.orderbook")
    ]
    assert pod["serviceAccountName"] == recorder["serviceAccountName"]
    assert pod["restartPolicy"] == "Never"
    for container in pod["containers"]:
        assert container["image"] == recorder["containers"][0]["image"]
        assert container["envFrom"] == recorder["containers"][0]["envFrom"]
        assert container["env"] == recorder["containers"][0]["env"]
    assert job["metadata"]["ownerReferences"][0]["name"] == "rst"
    reasons = _event_reasons(k8s, ns, "rst")
    assert [r for r in reasons if r.startswith("Reset")] == [
        "ResetStarted",
        "ResetRunning",
        "ResetSucceeded",
    ]

    # Not a time: refused in the status, the annotation removed, the recorders left running.
    _annotate(k8s, ns, "rst", f"{RESET}=yesterday")
    _until(
        lambda: (_status(k8s, ns, "rst").get("lastReset") or {}).get("outcome") == "Invalid",
        "status.lastReset Invalid",
    )
    _until(lambda: RESET not in _annotations(k8s, ns, "rst"), "the invalid annotation removed")
    assert _replicas(k8s, ns, "rst") == 2 and len(_jobs(k8s, ns)) == 1
