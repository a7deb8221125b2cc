"""`helm uninstall` of a release with `recorder.enabled`, the operator already gone.

The chart's own operator pod only pretends to run on the test cluster's kwok node, so the
operator is the real one run beside it (it adds what it adds, a finalizer in earlier versions)
and stopped before the uninstall: the order in which an uninstall can remove things.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import create_tsdb_secret
from tests.integration.k8s.operator_proc import ROOT, Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


def _helm(k8s: K8s, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "helm"), "--kubeconfig", str(k8s.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=k8s.env,
    )


def test_uninstall_with_a_recorder_never_hangs(k8s: K8s, tmp_path: Path) -> None:
    ns = f"helm-{uuid.uuid4().hex[:8]}"
    release = f"r{uuid.uuid4().hex[:6]}"
    k8s.kubectl("create", "namespace", ns)
    create_tsdb_secret(k8s, ns)
    values = {
        # restricted would install a cluster-wide admission policy, reaching the DataRecorders
        # of the tests running beside this one (test_operator_policy.py tests it, bound to
        # its own namespace).
        "policy": {"mode": "permissive"},
        "operator": {"watchNamespace": ns},
        "recorder": {
            "enabled": True,
            "name": "market",
            "spec": {
                "kafka": {"brokers": ["kafka:9092"]},
                "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
            },
        },
    }
    (tmp_path / "values.json").write_text(json.dumps(values))
    installed = _helm(
        k8s, "install", release, str(ROOT / "helm" / "datarecorder"), "-n", ns,
        "-f", str(tmp_path / "values.json"), "--skip-crds",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr + installed.stdout
    op = Operator(k8s, ns, tmp_path / "operator.log")
    try:
        op.wait_alive()

        def reconciled() -> bool:
            dr = k8s.get_json("datarecorder", "market", namespace=ns)
            status = dr.get("status") or {}
            return bool(status.get("observedGeneration") == dr["metadata"]["generation"])

        wait_for(reconciled, timeout=90, what="the release's DataRecorder reconciled")
    finally:
        op.stop()  # the operator goes first
    op.assert_no_traceback_while_running()

    removed = _helm(k8s, "uninstall", release, "-n", ns, "--wait", "--timeout", "60s")
    assert removed.returncode == 0, removed.stderr + removed.stdout
    gone = k8s.kubectl("get", "datarecorder", "market", "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout
    k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)
