"""Every example of examples/ applied to the real control plane and reconciled by the operator.

Owns the end-to-end check that a user following examples/README.md gets the children the
operator renders for each file, and that an invalid example the schema cannot see (its first
line says so) is refused by the operator in the status, readably.
"""

from __future__ import annotations

import base64
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import Policy
from datarecorder_operator.rendering import render_children
from datarecorder_operator.workload import referenced_secrets, render_deployment

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import SECRET_MARK
from tests.integration.k8s.operator_proc import Operator
from tests.support import examples

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

OPERATOR_REFUSES = [p for p in examples.INVALID if examples.refused_by(p) == "operator"]
# examples/full.yaml names a ServiceAccount of its own: the restricted policy lets it only when
# listed, as the chart's policy.allowedServiceAccounts does.
SERVICE_ACCOUNT = "recorder"
TEST_LABEL = "datarecorder.dev/test-examples"  # on the cluster-wide objects this module makes
POLICY = Policy(allowed_service_accounts=(SERVICE_ACCOUNT,))
# Every key an example's Secrets are read at (a stand-in value each): the recorders' env and
# mounts, and the operator's own lag reads (SASL user and password, the CA).
SECRET_KEYS = (
    "password", "username", "ca.crt", "user.crt", "user.key", "sasl.jaas.config",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
)  # fmt: skip


@pytest.fixture(scope="module")
def namespaces(k8s: K8s) -> Iterator[dict[Path, str]]:
    """A namespace per example (they share names), deleted afterwards."""
    by_file = {path: f"ex-{uuid.uuid4().hex[:10]}" for path in examples.VALID + OPERATOR_REFUSES}
    for ns in by_file.values():
        k8s.kubectl("create", "namespace", ns)
    yield by_file
    for ns in by_file.values():
        k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    k8s.kubectl("delete", "priorityclass", "-l", TEST_LABEL, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    k8s: K8s, namespaces: dict[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """One operator watching every example's namespace, under the restricted policy."""
    first, *others = namespaces.values()
    more = [arg for ns in others for arg in ("--namespace", ns)]
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(k8s, first, log, extra_args=(*more, "--allowed-service-account", SERVICE_ACCOUNT))
    try:
        op.wait_alive()
        yield op
    finally:
        op.stop()
        op.assert_no_traceback_while_running()


def _in_namespace(path: Path, namespace: str) -> dict[str, Any]:
    manifest = examples.load(path)
    manifest["metadata"]["namespace"] = namespace
    return manifest


def _prepare(k8s: K8s, manifest: dict[str, Any]) -> None:
    """What the example's comments ask for first: its Secrets (marked for the DataRecorders of
    the namespace) and its ServiceAccount."""
    meta, spec = manifest["metadata"], manifest["spec"]
    parsed = parse_spec(meta["name"], meta["namespace"], spec, POLICY)
    data = {key: base64.b64encode(b"stand-in").decode() for key in SECRET_KEYS}
    for name in referenced_secrets(render_deployment(parsed, None)):
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "annotations": {SECRET_MARK: "*"}},
            "data": data,
        }
        k8s.apply(secret, meta["namespace"])
    if parsed.service_account_name:
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT}}
        k8s.apply(sa, meta["namespace"])
    if parsed.priority_class_name:  # cluster-wide: made once, removed by the fixture
        k8s.apply(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": parsed.priority_class_name, "labels": {TEST_LABEL: "true"}},
                "value": 1000,
            }
        )


def _service_monitors_served(k8s: K8s) -> bool:
    found = k8s.kubectl("api-resources", "--api-group=monitoring.coreos.com", "-o", "name")
    return "servicemonitors" in found.stdout


def _condition(dr: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (dr.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def test_every_valid_example_is_applied_and_reconciled(
    k8s: K8s, operator: Operator, namespaces: dict[Path, str]
) -> None:
    monitors = _service_monitors_served(k8s)
    wanted: dict[Path, list[tuple[str, str]]] = {}
    for path in examples.VALID:
        manifest = _in_namespace(path, namespaces[path])
        _prepare(k8s, manifest)
        k8s.apply(manifest, namespaces[path])  # the server's schema and CEL rules take it
        meta = manifest["metadata"]
        parsed = parse_spec(meta["name"], meta["namespace"], manifest["spec"], POLICY)
        children = render_children(parsed, service_monitor_available=monitors)
        wanted[path] = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert {k for kinds in wanted.values() for k, _ in kinds} >= {
        "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"
    }  # fmt: skip

    def reconciled(path: Path) -> bool:
        ns, name = namespaces[path], examples.load(path)["metadata"]["name"]
        dr = k8s.get_json("datarecorder", name, namespace=ns)
        status = dr.get("status") or {}
        if status.get("observedGeneration") != dr["metadata"]["generation"]:
            return False
        degraded = _condition(dr, "Degraded")
        assert degraded.get("status") != "True", f"{path.name}: {degraded}"
        for kind, child in wanted[path]:
            found = k8s.kubectl("get", kind, child, "-n", ns, "-o", "json", check=False)
            if found.returncode != 0:
                return False
        return bool(degraded)

    for path in examples.VALID:
        wait_for(functools.partial(reconciled, path), timeout=120, what=f"{path.name} reconciled")
        ns, name = namespaces[path], examples.load(path)["metadata"]["name"]
        uid = k8s.get_json("datarecorder", name, namespace=ns)["metadata"]["uid"]
        for kind, child in wanted[path]:
            refs = k8s.get_json(kind, child, namespace=ns)["metadata"].get("ownerReferences")
            assert [r["uid"] for r in refs or []] == [uid], (path.name, kind, child)


@pytest.mark.parametrize("path", OPERATOR_REFUSES, ids=[p.name for p in OPERATOR_REFUSES])
def test_an_invalid_example_the_schema_cannot_see_is_refused_in_the_status(
    k8s: K8s, operator: Operator, namespaces: dict[Path, str], path: Path
) -> None:
    ns = namespaces[path]
    manifest = _in_namespace(path, ns)
    k8s.apply(manifest, ns)  # the schema cannot see what is wrong with it

    def degraded() -> dict[str, Any] | None:
        dr = k8s.get_json("datarecorder", manifest["metadata"]["name"], namespace=ns)
        cond = _condition(dr, "Degraded")
        return cond if cond.get("status") == "True" else None

    cond = wait_for(degraded, timeout=60, what=f"{path.name} refused in its status")
    assert cond["reason"] == "InvalidSpec"
    assert "spec." in cond["message"] and len(cond["message"]) < 300, cond["message"]
    deployments = k8s.get_json("deployments", namespace=ns)["items"]
    assert deployments == [], "an invalid spec must render nothing"
