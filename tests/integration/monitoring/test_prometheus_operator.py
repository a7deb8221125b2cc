"""The chart's ServiceMonitor and PrometheusRule, and the operator-rendered recorder
ServiceMonitor, through a real Prometheus Operator (v0.85.0, a host process on scripts/k8s's
cluster): given a `Prometheus` resource it writes a scrape configuration with the recorders'
and the operator's endpoints, and rule files that promtool loads and whose unit tests pass."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from datarecorder_operator.naming import child_name
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.rendering import render_children

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import MINIMAL_SPEC
from tests.integration.monitoring.rulefiles import (
    ALERTS,
    CHART,
    ROOT,
    UNIT_TESTS,
    tool,
    write_rules,
)

pytestmark = [pytest.mark.integration, pytest.mark.k8s]

PROMETHEUS_CR = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "Prometheus",
    "metadata": {"name": "test"},
    "spec": {
        "serviceMonitorSelector": {},
        "serviceMonitorNamespaceSelector": {},
        "ruleSelector": {},
        "ruleNamespaceSelector": {},
    },
}


@pytest.fixture
def prometheus_operator(k8s: K8s, tmp_path: Path) -> Iterator[None]:
    """The Prometheus Operator's CRDs and the operator itself; both removed afterwards, so the
    other tests keep a cluster without the monitoring.coreos.com APIs."""
    crds = Path(tool("operator-crds"))
    k8s.kubectl("apply", "--server-side", "-f", str(crds), timeout=120)
    # monitoring.coreos.com_servicemonitors.yaml holds servicemonitors.monitoring.coreos.com
    # (reading them would take PyYAML's 1.1 "=" value tag, which safe_load refuses).
    stems = [f.stem.partition("_") for f in sorted(crds.glob("*.yaml"))]
    names = [f"{plural}.{group}" for group, _, plural in stems]
    k8s.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
    )
    log = open(tmp_path / "prometheus-operator.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [tool("prometheus-operator"), "--web.listen-address=127.0.0.1:0"],
        env={**os.environ, "KUBECONFIG": str(k8s.kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        k8s.kubectl("delete", "crd", *names, "--wait=false", check=False)


def secret_config(k8s: K8s, namespace: str) -> dict[str, Any] | None:
    res = k8s.kubectl(
        "get", "-n", namespace, "secret", "prometheus-test", "-o", "json", check=False
    )
    if res.returncode != 0:
        return None
    data = json.loads(res.stdout)["data"].get("prometheus.yaml.gz")
    if not data:
        return None
    config: dict[str, Any] = yaml.safe_load(gzip.decompress(base64.b64decode(data)))
    return config


def test_scrape_config_and_rule_files_from_the_chart(
    k8s: K8s, k8s_namespace: str, prometheus_operator: None, tmp_path: Path
) -> None:
    ns = k8s_namespace
    k8s.apply(PROMETHEUS_CR, namespace=ns)
    rendered = subprocess.run(
        [
            str(ROOT / "scripts" / "helm"),
            "template",
            "dr",
            str(CHART),
            "-n",
            ns,
            "--set",
            "operator.serviceMonitor.enabled=true",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    wanted = {"Service", "ServiceMonitor", "PrometheusRule"}
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in wanted]
    assert {d["kind"] for d in docs} == wanted
    for doc in docs:
        k8s.apply(doc, namespace=ns)
    # The recorder's ServiceMonitor as the operator renders it for a DataRecorder.
    spec = parse_spec(
        "rec", ns, {**MINIMAL_SPEC, "monitoring": {"serviceMonitor": {"enabled": True}}}
    )
    for child in render_children(spec, service_monitor_available=True):
        if child["kind"] in ("Service", "ServiceMonitor"):
            k8s.apply(child, namespace=ns)

    def jobs() -> set[str] | None:
        config = secret_config(k8s, ns)
        found = {j["job_name"] for j in (config or {}).get("scrape_configs", [])}
        return (
            found
            if {f"serviceMonitor/{ns}/{child_name(spec.name, 'ServiceMonitor')}/0"} <= found
            else None
        )

    found = wait_for(jobs, timeout=120, what="the scrape config with the recorders' job")
    assert f"serviceMonitor/{ns}/dr-datarecorder-operator/0" in found

    def rule_files() -> dict[str, str] | None:
        res = k8s.kubectl(
            "get", "-n", ns, "configmap", "prometheus-test-rulefiles-0", "-o", "json", check=False
        )
        if res.returncode != 0:
            return None
        data: dict[str, str] = json.loads(res.stdout).get("data") or {}
        return data or None

    files = wait_for(rule_files, timeout=120, what="the rule files configmap")
    assert len(files) == 1
    text = next(iter(files.values()))
    (tmp_path / "alerts.yaml").write_text(text)
    check = subprocess.run(
        [tool("promtool"), "check", "rules", str(tmp_path / "alerts.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rules = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    found_rules = f"{rules} rules found"
    assert check.returncode == 0 and found_rules in check.stdout, check.stdout + check.stderr
    # The unit tests pass on the rules as the Prometheus Operator wrote them (descriptions
    # dropped as in test_alert_rules.py).
    groups = yaml.safe_load(text)["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.get("annotations", {}).pop("description", None)
    write_rules(groups, tmp_path / "alerts.yaml")
    (tmp_path / UNIT_TESTS.name).write_text(UNIT_TESTS.read_text())
    unit = subprocess.run(
        [tool("promtool"), "test", "rules", str(tmp_path / UNIT_TESTS.name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
