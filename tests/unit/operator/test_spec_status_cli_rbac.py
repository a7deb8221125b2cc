"""Spec parsing errors, status conditions, the render CLI and the RBAC rules."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from datarecorder_operator import cli, kube, rbac, rendering, status
from datarecorder_operator.lag import LagReport
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SpecError
from datarecorder_operator.spec_reader import parse_quantity

from tests.unit.operator.helpers import EXAMPLES, EXAMPLES_POLICY, example

BASE: dict[str, Any] = {
    "image": "img:1",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "db"}},
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("9lives", BASE, "metadata.name"),
        ("x" * 57, BASE, "metadata.name"),
        ("r", with_(kafka={"brokers": []}), "spec.kafka.brokers must not be empty"),
        ("r", with_(kafka={"brokers": ["k"]}), "spec.kafka.brokers"),
        ("r", with_(replicas=True), "spec.replicas must be an integer"),
        ("r", with_(replicas=-1), "spec.replicas must be between 0 and 1000"),
        ("r", with_(logLevel="LOUD"), "spec.logLevel must be one of"),
        ("r", with_(resources={"requests": {"cpu": "lots"}}), "spec.resources.requests.cpu"),
        (
            "r",
            with_(
                kafka={
                    "brokers": ["k:1"],
                    "securityProtocol": "SSL",
                    "tls": {"secretName": "t", "certKey": "c"},
                }
            ),
            "certKey and spec.kafka.tls.keyKey",
        ),
        ("r", {"kafka": {"brokers": ["k:9092"]}}, "spec.image is required"),
    ],
)
def test_invalid_specs_name_the_field(name: str, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_spec(name, "ns", spec)


def test_quantities() -> None:
    assert parse_quantity("500m", "f") < parse_quantity("1", "f")
    assert parse_quantity("1Gi", "f") == 1024**3
    assert parse_quantity("1G", "f") == 10**9
    assert parse_quantity(2, "f") == 2


def deployment(want: int, ready: int, updated: int, total: int, gen: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": want},
        "status": {
            "observedGeneration": gen,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "replicas": total,
        },
    }


def conds(obs: status.Observation) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.conditions_for(obs)}


def test_conditions_ready() -> None:
    got = conds(status.Observation(generation=3, deployment=deployment(2, 2, 2, 2)))
    assert got == {
        "Ready": ("True", "RecordersReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }


def test_conditions_rolling_out() -> None:
    got = conds(status.Observation(generation=3, deployment=deployment(2, 2, 1, 3)))
    assert got["Ready"][0] == "False" and got["Progressing"] == ("True", "RollingOut")


def test_conditions_deployment_controller_behind() -> None:
    d = deployment(2, 2, 2, 2)
    d["metadata"]["generation"] = 2
    assert conds(status.Observation(generation=1, deployment=d))["Progressing"][0] == "True"


def test_conditions_invalid_spec_is_degraded() -> None:
    obs = status.Observation(generation=4, error="spec.x is bad", error_reason="InvalidSpec")
    got = status.compute_status(obs, None, now="2026-01-01T00:00:00Z")
    degraded = next(c for c in got["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
    assert degraded["message"] == "spec.x is bad"
    assert got["observedGeneration"] == 4


def test_conditions_failed_rollout_is_degraded() -> None:
    d = deployment(2, 0, 2, 2)
    d["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "ReplicaSet has timed out progressing."}
    ]  # fmt: skip
    assert conds(status.Observation(generation=1, deployment=d))["Degraded"] == (
        "True",
        "DeploymentFailed",
    )


def test_transition_time_kept_while_status_unchanged() -> None:
    obs = status.Observation(generation=1, deployment=deployment(1, 1, 1, 1))
    first = status.compute_status(obs, None, now="T1")
    second = status.compute_status(obs, first, now="T2")
    assert [c["lastTransitionTime"] for c in second["conditions"]] == ["T1"] * 3
    assert not status.status_changed(first, second)
    broken = status.Observation(generation=1, deployment=deployment(1, 0, 1, 1))
    third = status.compute_status(broken, second, now="T3")
    ready = next(c for c in third["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "T3"


def test_status_carries_lag_replicas_selector() -> None:
    obs = status.Observation(
        generation=1,
        deployment=deployment(3, 2, 3, 3),
        selector="a=b",
        config_hash="h",
        lag=LagReport(1234, 6, 3, {}),
        lag_time="T",
    )
    got = status.compute_status(obs, {"lagError": "old"}, now="T")
    assert got["lag"] == {"timescaledb": 1234}
    assert got["partitions"] == 6
    assert got["replicas"] == 3 and got["readyReplicas"] == 2 and got["desiredReplicas"] == 3
    assert got["selector"] == "a=b" and got["configHash"] == "h"
    assert got["lagError"] is None  # removes the stale error


def test_a_steady_lag_writes_no_status() -> None:
    def observed(total: int, when: str) -> status.Observation:
        return status.Observation(
            generation=1, deployment=deployment(1, 1, 1, 1), lag=LagReport(total, 6, 3, {}),
            lag_time=when, lag_available=True,
        )  # fmt: skip

    first = status.compute_status(observed(10, "T1"), None, now="T1")
    first = {k: v for k, v in first.items() if v is not None}  # as stored: null keys removed
    again = status.compute_status(observed(10, "T2"), first, now="T2")
    assert again["lagObservedTime"] == "T1"
    assert not status.status_changed(first, again)
    moved = status.compute_status(observed(11, "T3"), again, now="T3")
    assert moved["lagObservedTime"] == "T3" and status.status_changed(again, moved)


def test_render_cli_prints_every_child_of_every_document(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text(
        (EXAMPLES / "minimal.yaml").read_text() + "\n---\n" + (EXAMPLES / "full.yaml").read_text()
    )
    out, err = io.StringIO(), io.StringIO()
    # full.yaml names its own ServiceAccount: listed, as its chart values would list it.
    argv = ["render", "-f", str(both), "--allowed-service-account", "recorder"]
    assert cli.main(argv, stdout=out, stderr=err) == 0
    docs = list(yaml.safe_load_all(out.getvalue()))
    assert [d["kind"] for d in docs] == [
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor",
    ]  # fmt: skip
    assert {d["metadata"]["name"] for d in docs} >= {"recorder-recorder", "krx-recorder-recorder"}


def test_render_cli_reports_invalid_specs(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = str(EXAMPLES / "invalid" / "request-above-limit.yaml")
    assert cli.main(["render", "-f", path], stdout=out, stderr=err) == 2
    assert "spec.resources.requests.memory (4Gi) must not exceed" in err.getvalue()
    assert out.getvalue() == ""


def test_rbac_covers_every_child_kind_without_wildcards() -> None:
    rules = rbac.cluster_role_rules()
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in item for item in granted)
    for child in rendering.render_children(
        parse_spec("r", "ns", example("full.yaml")["spec"], EXAMPLES_POLICY)
    ):
        res = kube.resource_of(child["apiVersion"], child["kind"])
        for verb in ("get", "create", "patch", "delete"):
            assert (res.group, res.plural, verb) in granted, (res, verb)
    assert ("datarecorder.dev", "datarecorders/status", "patch") in granted
    assert ("", "secrets", "get") in granted
    assert ("", "secrets", "list") not in granted
    # kopf's observers list and watch CRDs and (namespaced runs) namespaces; nothing more.
    observed = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    assert {(g, r, v) for g, r, v in granted if (g, r) in observed} == {
        (g, r, v) for g, r in observed for v in ("list", "watch")
    }
    assert rbac.cluster_role()["rules"] == rules
