"""spec.kafka.sasl with the token mechanisms: OAUTHBEARER (a token endpoint) and AWS_MSK_IAM.

What the operator accepts and refuses (the CRD's CEL rules say the same: the server's words in
tests/integration/k8s/test_crd_schema.py), the environment it renders (the client secret only
ever as a secretKeyRef), and its lag reads, which it leaves to the recorders' metrics.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from datarecorder_operator import autoscaling, environment, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SpecError
from datarecorder_operator.state import ObjectState, OperatorConfig

from recorder.runtime.settings import Settings
from tests.unit.operator.test_environment_contract import recorder_environment, recorder_settings

OAUTH: dict[str, Any] = {
    "mechanism": "OAUTHBEARER",
    "oauthbearer": {
        "tokenEndpointURL": "https://login.example.com/oauth2/token",
        "clientId": "datarecorder",
        "clientSecretSecret": {"name": "kafka-oauth", "key": "client-secret"},
        "scope": "kafka",
    },
}
MSK: dict[str, Any] = {"mechanism": "AWS_MSK_IAM", "awsRegion": "eu-west-1"}


def _spec(sasl: dict[str, Any], protocol: str = "SASL_SSL", **more: Any) -> dict[str, Any]:
    return {
        "image": "ghcr.io/example/datarecorder:0.1.0",
        "kafka": {"brokers": ["kafka:9093"], "securityProtocol": protocol, "sasl": sasl},
        "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
        **more,
    }


def _refused(spec: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec("rec", "md", spec)
    return str(err.value)


def test_oauthbearer_renders_its_settings_and_the_secret_as_a_reference() -> None:
    parsed = parse_spec("rec", "md", _spec(OAUTH))
    data = environment.config_data(parsed)
    assert data["KAFKA_SASL_MECHANISM"] == "OAUTHBEARER"
    assert data["KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"] == (
        "https://login.example.com/oauth2/token"
    )
    assert data["KAFKA_SASL_OAUTHBEARER_CLIENT_ID"] == "datarecorder"
    assert data["KAFKA_SASL_OAUTHBEARER_SCOPE"] == "kafka"
    assert "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET" not in data  # never in the ConfigMap
    env = {e["name"]: e for e in environment.secret_env(parsed)}
    assert env["KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"] == {
        "name": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "kafka-oauth", "key": "client-secret"}},
    }
    assert not {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} & set(env)
    # The pods read that Secret (the restricted policy checks its mark on exactly these).
    assert "kafka-oauth" in workload.referenced_secrets(workload.render_deployment(parsed, 1))
    got: Settings = recorder_settings(recorder_environment(parsed))
    assert got.KAFKA_SASL_MECHANISM == "OAUTHBEARER"
    assert got.KAFKA_SASL_OAUTHBEARER_CLIENT_ID == "datarecorder"


def test_msk_iam_renders_the_region_and_no_secret() -> None:
    parsed = parse_spec("rec", "md", _spec(MSK))
    data = environment.config_data(parsed)
    assert data["KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"
    assert data["KAFKA_SASL_AWS_REGION"] == "eu-west-1"
    assert not any(e["name"].startswith("KAFKA_SASL") for e in environment.secret_env(parsed))
    got = recorder_settings(recorder_environment(parsed))
    assert (got.KAFKA_SASL_MECHANISM, got.KAFKA_SASL_AWS_REGION) == ("AWS_MSK_IAM", "eu-west-1")


@pytest.mark.parametrize(
    ("sasl", "protocol", "words"),
    [
        ({"mechanism": "OAUTHBEARER"}, "SASL_SSL", "OAUTHBEARER needs spec.kafka.sasl.oauthbearer"),
        (
            {**OAUTH, "oauthbearer": {**OAUTH["oauthbearer"], "tokenEndpointURL": "ftp://x/t"}},
            "SASL_SSL",
            "tokenEndpointURL 'ftp://x/t' is not an http(s) URL",
        ),
        (
            {
                **OAUTH,
                "oauthbearer": {
                    k: v for k, v in OAUTH["oauthbearer"].items() if k != "clientSecretSecret"
                },
            },
            "SASL_SSL",
            "clientSecretSecret is required",
        ),
        (OAUTH, "SASL_PLAINTEXT", "sends the bearer token in clear text"),
        (MSK, "SASL_PLAINTEXT", "AWS_MSK_IAM needs securityProtocol SASL_SSL"),
        ({"mechanism": "AWS_MSK_IAM"}, "SASL_SSL", "AWS_MSK_IAM needs spec.kafka.sasl.awsRegion"),
        ({**MSK, "awsRegion": "moon"}, "SASL_SSL", "not 'moon'"),
        ({**OAUTH, "awsRegion": "eu-west-1"}, "SASL_SSL", "awsRegion is only used with"),
        (
            {"mechanism": "SCRAM-SHA-512", "secretName": "u", "oauthbearer": OAUTH["oauthbearer"]},
            "SASL_SSL",
            "oauthbearer is only used with mechanism OAUTHBEARER",
        ),
        ({"mechanism": "SCRAM-SHA-512"}, "SASL_SSL", "spec.kafka.sasl.secretName is required"),
    ],
)
def test_refusals_name_the_field(sasl: dict[str, Any], protocol: str, words: str) -> None:
    assert words in _refused(_spec(sasl, protocol))


def test_oauthbearer_over_plaintext_with_the_opt_in() -> None:
    parsed = parse_spec(
        "rec", "md", _spec({**OAUTH, "allowPlaintextPassword": True}, "SASL_PLAINTEXT")
    )
    assert parsed.kafka.sasl is not None and parsed.kafka.sasl.allow_plaintext_password


@pytest.mark.parametrize("sasl", [OAUTH, MSK])
def test_operator_scaling_is_refused_and_hpa_taken(sasl: dict[str, Any]) -> None:
    operator_mode = {"autoscaling": {"enabled": True, "mode": "operator"}}
    assert "use autoscaling.mode hpa" in _refused(_spec(sasl, "SASL_SSL", **operator_mode))
    parse_spec("rec", "md", _spec(sasl, autoscaling={"enabled": True, "mode": "hpa"}))


@pytest.mark.parametrize("sasl", [OAUTH, MSK])
def test_the_operator_leaves_the_lag_to_the_recorders(sasl: dict[str, Any]) -> None:
    """No read with credentials it does not have: no Kafka or Secret request, no failure
    counted (so no fallback replicas and no Warning per poll), and a status that says why."""
    parsed = parse_spec("rec", "md", _spec(copy.deepcopy(sasl)))
    state = ObjectState()

    class NoClient:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the operator called the API: {name}")

    asyncio.run(autoscaling.poll_lag(NoClient(), parsed, state, OperatorConfig()))  # type: ignore[arg-type]
    assert state.lag is None and state.lag_failures == 0
    assert state.lag_error is not None and "datarecorder_lag_records" in state.lag_error
    assert (
        autoscaling.lag_not_read(
            parse_spec("rec", "md", _spec({"mechanism": "SCRAM-SHA-512", "secretName": "u"}))
        )
        is None
    )
