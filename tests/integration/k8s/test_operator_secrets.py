"""Credentials and identity on the real control plane: the operator's lag reads take SASL
credentials from a `sasl.jaas.config` Secret key (as a Strimzi KafkaUser Secret holds them),
and `spec.serviceAccount` gives the recorders their own annotated ServiceAccount (IRSA /
workload identity), removed again when the spec drops it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from datarecorder_operator import kube
from datarecorder_operator.autoscaling import _kafka_access
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import SECRET_MARK_ANNOTATION as MARK

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import MINIMAL_SPEC, create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

JAAS = (
    "org.apache.kafka.common.security.scram.ScramLoginModule required "
    'username="recorder" password="from-the-jaas-line";'
)
ROLE = "arn:aws:iam::123456789012:role/market-data-lake"


@pytest.fixture
def operator_ns(k8s: K8s, tmp_path: Path) -> Iterator[str]:
    name = f"sec-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    create_tsdb_secret(k8s, name)
    op = Operator(k8s, name, tmp_path / "operator.log")
    try:
        op.wait_alive()
        yield name
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
        op.assert_no_traceback_while_running()


async def test_lag_reads_take_sasl_credentials_from_a_jaas_config_key(
    k8s: K8s, operator_ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Strimzi KafkaUser Secret: `password` and `sasl.jaas.config` (the password differs
    # here only to show which key was read).
    k8s.kubectl(
        "create", "secret", "generic", "recorder", "-n", operator_ns,
        "--from-literal=password=not-this-one", f"--from-literal=sasl.jaas.config={JAAS}",
    )  # fmt: skip
    k8s.kubectl("annotate", "secret", "recorder", "-n", operator_ns, f"{MARK}=other, rec")
    kafka = {
        "brokers": ["market-kafka-bootstrap.kafka.svc:9092"],
        "securityProtocol": "SASL_PLAINTEXT",
        "sasl": {"secretName": "recorder", "jaasConfigKey": "sasl.jaas.config"},
    }
    spec = parse_spec("rec", operator_ns, {**MINIMAL_SPEC, "kafka": kafka})
    monkeypatch.setenv("KUBECONFIG", str(k8s.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    client = kube.KubeClient(info)
    try:
        access = await _kafka_access(client, spec)
    finally:
        await client.close()
    assert (access.sasl_username, access.sasl_password) == ("recorder", "from-the-jaas-line")
    assert access.sasl_mechanism == "SCRAM-SHA-512"


def _service_account(k8s: K8s, ns: str, name: str) -> dict[str, Any] | None:
    proc = k8s.kubectl("get", "serviceaccount", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_service_account_annotations_reach_an_owned_service_account(
    k8s: K8s, operator_ns: str
) -> None:
    identity = {"annotations": {"eks.amazonaws.com/role-arn": ROLE}}
    k8s.apply(data_recorder("lake", serviceAccount=identity), operator_ns)
    sa = wait_for(
        lambda: _service_account(k8s, operator_ns, "lake-recorder"),
        timeout=60,
        what="ServiceAccount lake-recorder",
    )
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == ROLE
    assert [r["kind"] for r in sa["metadata"]["ownerReferences"]] == ["DataRecorder"]
    assert sa["automountServiceAccountToken"] is False
    wait_for(
        lambda: (
            k8s.get_json("deploy", "lake-recorder", namespace=operator_ns)["spec"]["template"][
                "spec"
            ]["serviceAccountName"]
            == "lake-recorder"
        ),
        timeout=60,
        what="the pods to use it",
    )
    # Dropping spec.serviceAccount removes the ServiceAccount and the pods go back to default.
    k8s.kubectl(
        "patch", "datarecorder", "lake", "-n", operator_ns, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/serviceAccount"}]',
    )  # fmt: skip
    wait_for(
        lambda: _service_account(k8s, operator_ns, "lake-recorder") is None,
        timeout=60,
        what="the ServiceAccount deleted",
    )
    pod = k8s.get_json("deploy", "lake-recorder", namespace=operator_ns)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "default"
