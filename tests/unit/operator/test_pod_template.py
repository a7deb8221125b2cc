"""Pod template passthrough (as Strimzi's `template`) and the database/Kafka knobs it carries."""

from __future__ import annotations

from typing import Any

import pytest
from datarecorder_operator import environment, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SpecError

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
AFFINITY = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "rec"}},
                },
            }
        ]
    }
}
SPREAD = {
    "maxSkew": 1,
    "topologyKey": "topology.kubernetes.io/zone",
    "whenUnsatisfiable": "ScheduleAnyway",
}


def pod(**spec: Any) -> dict[str, Any]:
    parsed = parse_spec("rec", "md", {**BASE, **spec})
    result: dict[str, Any] = workload.render_deployment(parsed, 1)["spec"]["template"]["spec"]
    return result


def test_scheduling_and_extra_env_volumes_pass_through() -> None:
    got = pod(
        affinity=AFFINITY,
        topologySpreadConstraints=[SPREAD],
        env=[{"name": "TZ", "value": "Asia/Seoul"}],
        envFrom=[{"secretRef": {"name": "extra"}}],
        volumes=[{"name": "certs", "configMap": {"name": "certs"}}],
        volumeMounts=[{"name": "certs", "mountPath": "/certs"}],
    )
    assert got["affinity"] == AFFINITY
    assert got["topologySpreadConstraints"] == [SPREAD]
    (container,) = got["containers"]
    assert container["env"][-1] == {"name": "TZ", "value": "Asia/Seoul"}
    assert container["envFrom"][0] == {
        "configMapRef": {"name": "rec-recorder-config"}
    }  # still first
    assert container["envFrom"][1] == {"secretRef": {"name": "extra"}}
    assert {"name": "certs", "configMap": {"name": "certs"}} in got["volumes"]
    assert {"name": "certs", "mountPath": "/certs"} in container["volumeMounts"]


def test_no_service_account_token_unless_asked() -> None:
    assert pod()["automountServiceAccountToken"] is False
    # A token only of the ServiceAccount the operator makes (IRSA, workload identity).
    got = pod(automountServiceAccountToken=True, serviceAccount={})
    assert got["automountServiceAccountToken"] is True


def test_security_contexts_merge_onto_safe_defaults_for_openshift() -> None:
    default = pod()
    assert default["securityContext"]["runAsUser"] == 10001
    # restricted-v2 assigns its own uid: an empty pod context drops the operator's uid, and
    # the safe defaults stay (a user context is laid over them, never in their place).
    got = pod(podSecurityContext={}, containerSecurityContext={"readOnlyRootFilesystem": False})
    assert got["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert got["containers"][0]["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,
        "capabilities": {"drop": ["ALL"]},
    }


def test_database_tls_with_a_ca_secret_and_hot_path_switch() -> None:
    db = {**BASE["timescaledb"], "sslMode": "verify-full", "caSecret": {"name": "db-ca"}}
    spec = parse_spec("rec", "md", {**BASE, "timescaledb": {**db, "writeEnabled": False}})
    data = environment.config_data(spec)
    assert data["TIMESCALEDB_SSLMODE"] == "verify-full"
    assert data["PGSSLROOTCERT"] == "/etc/datarecorder/db-ca/ca.crt"
    assert data["DB_WRITE_ENABLED"] == "false"
    got = workload.render_deployment(spec, 1)["spec"]["template"]["spec"]
    assert {"name": "db-ca", "secret": {"secretName": "db-ca", "defaultMode": 0o440}} in got[
        "volumes"
    ]


def test_offset_reset_policy_reaches_the_recorder() -> None:
    spec = parse_spec("rec", "md", {**BASE, "autoscaling": {"offsetResetPolicy": "latest"}})
    assert environment.config_data(spec)["KAFKA_AUTO_OFFSET_RESET"] == "latest"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("env", [{"name": "TIMESCALEDB_PASSWORD", "value": "x"}], r"spec\.env\[0\]\.name"),
        ("volumes", [{"name": "tmp", "emptyDir": {}}], r"spec\.volumes\[0\]\.name"),
        ("affinity", ["not", "an", "object"], r"spec\.affinity must be an object"),
        ("topologySpreadConstraints", "x", r"spec\.topologySpreadConstraints must be a list"),
    ],
)
def test_bad_passthrough_names_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec("rec", "md", {**BASE, field: value})
