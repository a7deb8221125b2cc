"""The DataRecorder CRD as the real kube-apiserver serves it: schema, CEL rules and defaults.

Owns the checks that crds/ is accepted, validated and defaulted by the server, not by our code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datarecorder_operator import workload
from datarecorder_operator.parsing import parse_spec

from tests.fixtures.k8s import K8s
from tests.integration.k8s.manifests import CRD_NAME, GROUP, PLURAL, VERSION, data_recorder
from tests.support import examples

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[3]


def test_crd_is_established_with_structural_schema(k8s: K8s) -> None:
    crd = k8s.get_json("crd", CRD_NAME)
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    # A non-structural schema is accepted by v1 only with this condition set; ours must be clean.
    assert "NonStructuralSchema" not in conditions
    assert crd["status"]["acceptedNames"]["shortNames"] == ["drec"]
    resources = k8s.kubectl("api-resources", f"--api-group={GROUP}", "-o", "wide").stdout
    assert "datarecorders" in resources and " drec " in resources and "DataRecorder" in resources


def _create(k8s: K8s, namespace: str, manifest: dict[str, Any]) -> tuple[int, str]:
    proc = k8s.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    return proc.returncode, proc.stderr


KAFKA: dict[str, Any] = {"brokers": ["k:9092"]}

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "missing required image",
        {"image": None},
        ["spec.image: Required value"],
    ),
    (
        "negative replicas",
        {"replicas": -1},
        ["spec.replicas: Invalid value: -1", "should be greater than or equal to 0"],
    ),
    (
        "broker without port",
        {"kafka": {"brokers": ["kafka-0"]}},
        ["spec.kafka.brokers[0]", "should match"],
    ),
    (
        "unknown pull policy",
        {"imagePullPolicy": "Sometimes"},
        ['spec.imagePullPolicy: Unsupported value: "Sometimes"'],
    ),
    (
        "unknown state",
        {"state": "suspended"},
        [
            'spec.state: Unsupported value: "suspended": supported values: '
            '"running", "paused", "stopped"'
        ],
    ),
    (
        "startFrom with both time and offset (CEL)",
        {"kafka": {**KAFKA, "startFrom": {"time": "2026-12-01T00:00:00Z", "offset": 5}}},
        ["kafka.startFrom must name exactly one of time and offset"],
    ),
    (
        "startFrom with neither (CEL)",
        {"kafka": {**KAFKA, "startFrom": {}}},
        ["kafka.startFrom must name exactly one of time and offset"],
    ),
    (
        "startFrom time that is not RFC 3339",
        {"kafka": {**KAFKA, "startFrom": {"time": "2026-12-01"}}},
        ["spec.kafka.startFrom.time", "should match"],
    ),
    (
        "startFrom time without a zone",
        {"kafka": {**KAFKA, "startFrom": {"time": "2026-12-01T00:00:00"}}},
        ["spec.kafka.startFrom.time", "should match"],
    ),
    (
        "startFrom negative offset",
        {"kafka": {**KAFKA, "startFrom": {"offset": -1}}},
        ["spec.kafka.startFrom.offset: Invalid value: -1"],
    ),
    (
        "startFrom offset as a string",
        {"kafka": {**KAFKA, "startFrom": {"offset": "latest"}}},
        ["spec.kafka.startFrom.offset: Invalid value", "must be of type integer"],
    ),
    (
        "autoscaling min above max (CEL)",
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        ["autoscaling.minReplicas must be <= autoscaling.maxReplicas"],
    ),
    (
        # maxReplicas is not given: its default (6) is filled in before the CEL rule runs.
        "autoscaling min above the defaulted max (defaults before CEL)",
        {"autoscaling": {"enabled": True, "minReplicas": 8}},
        ["autoscaling.minReplicas must be <= autoscaling.maxReplicas"],
    ),
    (
        "s3 enabled without bucket (CEL)",
        {"s3": {"enabled": True}},
        ["s3.bucket is required when s3.enabled is true"],
    ),
    (
        "SASL without credentials (CEL)",
        {"kafka": {"brokers": ["k:9092"], "securityProtocol": "SASL_SSL"}},
        ["kafka.sasl is required when securityProtocol is SASL_PLAINTEXT or SASL_SSL"],
    ),
    (
        "PLAIN password over SASL_PLAINTEXT (CEL)",
        {
            "kafka": {
                "brokers": ["k:9092"],
                "securityProtocol": "SASL_PLAINTEXT",
                "sasl": {"mechanism": "PLAIN", "secretName": "kafka-user"},
            }
        },
        ["sends the password in clear text", "kafka.sasl.allowPlaintextPassword: true"],
    ),
    (
        "OAUTHBEARER without its token endpoint and secret (CEL)",
        {
            "kafka": {
                "brokers": ["k:9092"],
                "securityProtocol": "SASL_SSL",
                "sasl": {"mechanism": "OAUTHBEARER", "oauthbearer": {"clientId": "rec"}},
            }
        },
        ["kafka.sasl.mechanism OAUTHBEARER needs kafka.sasl.oauthbearer with tokenEndpointURL"],
    ),
    (
        "OAUTHBEARER token over SASL_PLAINTEXT (CEL)",
        {
            "kafka": {
                "brokers": ["k:9092"],
                "securityProtocol": "SASL_PLAINTEXT",
                "sasl": {
                    "mechanism": "OAUTHBEARER",
                    "oauthbearer": {
                        "tokenEndpointURL": "https://login.example.com/token",
                        "clientId": "rec",
                        "clientSecretSecret": {"name": "oauth", "key": "secret"},
                    },
                },
            }
        },
        ["sends the bearer token in clear text", "kafka.sasl.allowPlaintextPassword: true"],
    ),
    (
        "AWS_MSK_IAM over SASL_PLAINTEXT (CEL)",
        {
            "kafka": {
                "brokers": ["k:9092"],
                "securityProtocol": "SASL_PLAINTEXT",
                "sasl": {"mechanism": "AWS_MSK_IAM", "awsRegion": "eu-west-1"},
            }
        },
        ["kafka.sasl.mechanism AWS_MSK_IAM needs securityProtocol SASL_SSL"],
    ),
    (
        "AWS_MSK_IAM without a region (CEL)",
        {
            "kafka": {
                "brokers": ["k:9098"],
                "securityProtocol": "SASL_SSL",
                "sasl": {"mechanism": "AWS_MSK_IAM"},
            }
        },
        ["kafka.sasl.mechanism AWS_MSK_IAM needs kafka.sasl.awsRegion"],
    ),
    (
        "SCRAM without its Secret (CEL)",
        {
            "kafka": {
                "brokers": ["k:9092"],
                "securityProtocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-512"},
            }
        },
        ["kafka.sasl.secretName (the Secret with the password) is required"],
    ),
    (
        "operator scaling with a token login (CEL)",
        {
            "kafka": {
                "brokers": ["k:9098"],
                "securityProtocol": "SASL_SSL",
                "sasl": {"mechanism": "AWS_MSK_IAM", "awsRegion": "eu-west-1"},
            },
            "autoscaling": {"enabled": True, "mode": "operator"},
        },
        ["autoscaling.mode operator reads the lag with the operator's own Kafka login"],
    ),
    (
        "consumer group with '..' (CEL)",
        {"kafka": {"brokers": ["k:9092"], "groupId": "a..b"}},
        ["kafka.groupId must not contain '..'"],
    ),
    (
        "S3 prefix with '..' (CEL)",
        {"s3": {"prefix": "lake/../other"}},
        ["s3.prefix must not contain '..'"],
    ),
    (
        "S3 prefix ending in '/'",
        {"s3": {"prefix": "lake/"}},
        ["spec.s3.prefix", "should match"],
    ),
    (
        "S3 prefix starting with '/'",
        {"s3": {"prefix": "/lake"}},
        ["spec.s3.prefix", "should match"],
    ),
    (
        "S3 prefix with a control character",
        {"s3": {"prefix": "la\u0001ke"}},
        ["spec.s3.prefix", "should match"],
    ),
    (
        "rack with both topologyKey and id",
        {"kafka": {**KAFKA, "rack": {"topologyKey": "topology.kubernetes.io/zone", "id": "a"}}},
        ["spec.kafka.rack", "exactly one of topologyKey and id"],
    ),
    (
        "rack from a node label pods do not get",
        {"kafka": {**KAFKA, "rack": {"topologyKey": "kubernetes.io/hostname"}}},
        ["spec.kafka.rack.topologyKey: Unsupported value"],
    ),
    (
        "rack id with a space",
        {"kafka": {**KAFKA, "rack": {"id": "eu west"}}},
        ["spec.kafka.rack.id", "should match"],
    ),
]


@pytest.mark.parametrize(
    ("case", "overrides", "messages"), INVALID, ids=[case for case, _, _ in INVALID]
)
def test_invalid_spec_is_refused_with_the_servers_message(
    k8s: K8s, k8s_namespace: str, case: str, overrides: dict[str, Any], messages: list[str]
) -> None:
    manifest = data_recorder("invalid")
    for key, value in overrides.items():
        if value is None:
            del manifest["spec"][key]
        else:
            manifest["spec"][key] = value
    code, stderr = _create(k8s, k8s_namespace, manifest)
    assert code != 0, f"{case}: the server accepted {manifest['spec']}"
    assert 'The DataRecorder "invalid" is invalid' in stderr
    for message in messages:
        assert message in stderr, f"{case}: {message!r} not in the server's answer:\n{stderr}"
    gone = k8s.kubectl("get", "-n", k8s_namespace, "datarecorder", "invalid", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


# The same from examples/invalid: each file the schema or a CEL rule refuses (its first line
# says which) is refused by the real server, in words that name the field and the reason.
SERVER_REFUSES = [p for p in examples.INVALID if examples.refused_by(p) != "operator"]
# How the server words a schema violation (CEL violations carry the rule's own message).
SCHEMA_WORDS = ("Required value", "Unsupported value", "Invalid value", "should match")


@pytest.mark.parametrize("path", SERVER_REFUSES, ids=[p.name for p in SERVER_REFUSES])
def test_invalid_examples_are_refused_by_the_server_readably(
    k8s: K8s, k8s_namespace: str, path: Path
) -> None:
    manifest = examples.load(path)
    manifest["metadata"]["namespace"] = k8s_namespace
    name = manifest["metadata"]["name"]
    code, stderr = _create(k8s, k8s_namespace, manifest)
    assert code != 0, f"{path.name}: the server accepted it"
    assert f'The DataRecorder "{name}" is invalid' in stderr
    assert "spec." in stderr, stderr  # names the field
    if examples.refused_by(path) == "cel":
        messages = [rule["message"] for rule in _cel_rules()]
        assert any(m in stderr for m in messages), f"no CEL rule's message in:\n{stderr}"
    else:
        assert any(w in stderr for w in SCHEMA_WORDS), stderr
    assert len(stderr) < 1000, stderr  # a sentence or two, not a dump


def _cel_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        rules.extend(node.get("x-kubernetes-validations") or [])
        for sub in (node.get("properties") or {}).values():
            walk(sub)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    crd = examples.load(ROOT / "crds" / f"{CRD_NAME}.yaml")
    walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return rules


def test_root_cel_rule_refuses_a_name_unfit_for_children(k8s: K8s, k8s_namespace: str) -> None:
    manifest = data_recorder("r" * 55)  # a valid object name, but 55 > 54 characters
    code, stderr = _create(k8s, k8s_namespace, manifest)
    assert code != 0
    assert "metadata.name must be a DNS-1035 label of at most 54 characters" in stderr


def test_defaults_are_filled_in_by_the_server(k8s: K8s, k8s_namespace: str) -> None:
    k8s.apply(data_recorder("defaults", s3={"enabled": True, "bucket": "ticks"}), k8s_namespace)
    spec = k8s.get_json("datarecorder", "defaults", namespace=k8s_namespace)["spec"]
    assert spec["replicas"] == 1
    assert spec["imagePullPolicy"] == "IfNotPresent"
    assert spec["logLevel"] == "INFO"
    assert spec["kafka"]["topics"] == ["market.tick", "market.orderbook"]
    assert spec["kafka"]["securityProtocol"] == "PLAINTEXT"
    assert spec["timescaledb"]["port"] == 5432
    assert spec["timescaledb"]["database"] == "marketdata"
    assert spec["timescaledb"]["passwordSecret"]["key"] == "password"
    assert spec["s3"] == {
        "enabled": True,
        "bucket": "ticks",
        "region": "us-east-1",
        "prefix": "market-data",
        "batchSize": 10000,
        "batchTimeoutSeconds": 60,
        "orderbookLevels": "typed",
        "timestampUnit": "ns",
        "format": "parquet",
    }
    # Defaults apply only inside objects that exist: absent sections stay absent.
    assert "autoscaling" not in spec and "batching" not in spec and "monitoring" not in spec


def test_unknown_fields_strict_for_kubectl_pruned_for_plain_clients(
    k8s: K8s, k8s_namespace: str
) -> None:
    manifest = data_recorder("unknown")
    manifest["spec"]["replica"] = 3  # a typo of replicas
    code, stderr = _create(k8s, k8s_namespace, manifest)
    # kubectl asks for fieldValidation=Strict, so the server names the field and refuses.
    assert code != 0 and 'unknown field "spec.replica"' in stderr

    from kubernetes import client

    api = client.CustomObjectsApi(k8s.api_client())
    # Without fieldValidation the server's default is Warn: the field is pruned, not refused.
    created = api.create_namespaced_custom_object(GROUP, VERSION, k8s_namespace, PLURAL, manifest)
    assert "replica" not in created["spec"]
    assert created["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    "start_from", [{"time": "2026-12-01T09:00:00.5+09:00"}, {"offset": 0}, {"offset": 2**40}]
)
def test_start_from_time_or_offset_is_accepted(
    k8s: K8s, k8s_namespace: str, start_from: dict[str, Any]
) -> None:
    manifest = data_recorder("start", kafka={**KAFKA, "startFrom": start_from})
    code, stderr = _create(k8s, k8s_namespace, manifest)
    assert code == 0, stderr
    stored = k8s.get_json("datarecorder", "start", namespace=k8s_namespace)
    assert stored["spec"]["kafka"]["startFrom"] == start_from
    k8s.kubectl("delete", "datarecorder", "start", "-n", k8s_namespace)


def test_start_from_with_an_unknown_key_is_refused(k8s: K8s, k8s_namespace: str) -> None:
    """kubectl's strict field validation names the field (a schema without it would prune it
    silently and start from the reset policy)."""
    start_from = {"timestamp": "2026-12-01T00:00:00Z"}
    manifest = data_recorder("start", kafka={**KAFKA, "startFrom": start_from})
    code, stderr = _create(k8s, k8s_namespace, manifest)
    assert code != 0
    assert 'unknown field "spec.kafka.startFrom.timestamp"' in stderr, stderr


def test_a_rack_is_accepted_and_its_rendered_env_taken_by_the_server(
    k8s: K8s, k8s_namespace: str
) -> None:
    """spec.kafka.rack passes the schema and CEL rule, and the Deployment the operator renders
    for it (KAFKA_CLIENT_RACK from the pod's own zone label) is one the server accepts."""
    rack = {"topologyKey": "topology.kubernetes.io/zone"}
    manifest = data_recorder("racked", kafka={**KAFKA, "rack": rack})
    k8s.apply(manifest, k8s_namespace)
    spec = k8s.get_json("datarecorder", "racked", namespace=k8s_namespace)["spec"]
    assert spec["kafka"]["rack"] == rack
    deployment = workload.render_deployment(parse_spec("racked", k8s_namespace, spec), 1)
    proc = k8s.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        k8s_namespace,
        "-f",
        "-",
        input=json.dumps(deployment),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_an_iceberg_lake_is_taken_and_a_bad_catalog_uri_refused(
    k8s: K8s, k8s_namespace: str
) -> None:
    iceberg = {
        "catalogURI": "postgresql+psycopg2://iceberg@catalog-db:5432/iceberg",
        "catalogPasswordSecret": {"name": "catalog"},
        "namespace": "market_data",
    }
    s3 = {"enabled": True, "bucket": "ticks", "format": "iceberg", "iceberg": iceberg}
    k8s.apply(data_recorder("lake-table", s3=s3), k8s_namespace)
    spec = k8s.get_json("datarecorder", "lake-table", namespace=k8s_namespace)["spec"]
    assert spec["s3"]["iceberg"]["catalogPasswordSecret"] == {"name": "catalog", "key": "password"}
    bad = {**s3, "iceberg": {"catalogURI": "mysql://root@db/iceberg"}}
    code, stderr = _create(k8s, k8s_namespace, data_recorder("bad-table", s3=bad))
    assert code != 0 and "spec.s3.iceberg.catalogURI" in stderr, stderr


def test_a_rest_catalog_is_taken_and_credentials_in_its_url_refused(
    k8s: K8s, k8s_namespace: str
) -> None:
    iceberg = {
        "catalogURI": "https://polaris.example.com:8181/api/catalog",
        "catalogCredentialSecret": {"name": "polaris"},
        "warehouse": "market",
    }
    s3 = {"enabled": True, "bucket": "ticks", "format": "iceberg", "iceberg": iceberg}
    k8s.apply(data_recorder("rest-table", s3=s3), k8s_namespace)
    spec = k8s.get_json("datarecorder", "rest-table", namespace=k8s_namespace)["spec"]
    assert spec["s3"]["iceberg"]["catalogCredentialSecret"] == {
        "name": "polaris",
        "key": "credential",
    }
    refused = {
        "inline": {"catalogURI": "https://id:secret@polaris/api/catalog"},
        "sql-credential": {
            "catalogURI": "postgresql://iceberg@db/iceberg",
            "catalogCredentialSecret": {"name": "c"},
        },
        "rest-password": {
            "catalogURI": "https://polaris/api/catalog",
            "catalogPasswordSecret": {"name": "c"},
        },
        "sql-warehouse-name": {"warehouse": "market"},
    }
    for name, bad in refused.items():
        code, stderr = _create(
            k8s, k8s_namespace, data_recorder(f"bad-{name}", s3={**s3, "iceberg": bad})
        )
        assert code != 0 and "iceberg" in stderr, (name, stderr)


@pytest.mark.parametrize(
    "sasl",
    [
        {
            "mechanism": "OAUTHBEARER",
            "oauthbearer": {
                "tokenEndpointURL": "https://login.example.com/oauth2/token",
                "clientId": "datarecorder",
                "clientSecretSecret": {"name": "kafka-oauth", "key": "client-secret"},
                "scope": "kafka",
            },
        },
        {"mechanism": "AWS_MSK_IAM", "awsRegion": "eu-west-1"},
    ],
    ids=["oauthbearer", "aws-msk-iam"],
)
def test_token_logins_are_accepted_and_their_deployment_taken_by_the_server(
    k8s: K8s, k8s_namespace: str, sasl: dict[str, Any]
) -> None:
    """No secretName for the token mechanisms; the Deployment the operator renders (the client
    secret as a secretKeyRef) is one the server accepts."""
    kafka = {"brokers": ["k:9098"], "securityProtocol": "SASL_SSL", "sasl": sasl}
    manifest = data_recorder("token", kafka=kafka)
    code, stderr = _create(k8s, k8s_namespace, manifest)
    assert code == 0, stderr
    stored = k8s.get_json("datarecorder", "token", namespace=k8s_namespace)
    assert stored["spec"]["kafka"]["sasl"]["mechanism"] == sasl["mechanism"]
    deployment = workload.render_deployment(parse_spec("token", k8s_namespace, stored["spec"]), 1)
    applied = k8s.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        k8s_namespace,
        "-f",
        "-",
        input=json.dumps(deployment),
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    k8s.kubectl("delete", "datarecorder", "token", "-n", k8s_namespace)
