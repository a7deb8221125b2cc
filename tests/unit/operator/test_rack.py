"""spec.kafka.rack in the operator: the recorder's KAFKA_CLIENT_RACK, either a literal rack in
the ConfigMap or, for a topologyKey, the pod's own copy of its node's zone label through the
downward API (a pod cannot read node labels; PodTopologyLabelsAdmission copies the zone and
region labels onto it at binding). Refused readably otherwise, as the CRD's schema and CEL rule
refuse it.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from datarecorder_operator import environment, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import RecorderSpec, SpecError

from recorder.runtime.settings import Settings
from tests.unit.operator.helpers import cr_schema

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
ZONE = "topology.kubernetes.io/zone"


def kafka(rack: Any) -> dict[str, Any]:
    return {"brokers": ["k:9092"], **({} if rack is None else {"rack": rack})}


def spec(rack: Any) -> RecorderSpec:
    return parse_spec("rec", "md", {**BASE, "kafka": kafka(rack)})


def container(s: RecorderSpec) -> dict[str, Any]:
    (c,) = workload.render_deployment(s, 1)["spec"]["template"]["spec"]["containers"]
    return dict(c)


def rack_env(s: RecorderSpec) -> list[dict[str, Any]]:
    return [e for e in container(s)["env"] if e["name"] == "KAFKA_CLIENT_RACK"]


def test_no_rack_renders_none() -> None:
    s = spec(None)
    assert "KAFKA_CLIENT_RACK" not in environment.config_data(s)
    assert rack_env(s) == []


@pytest.mark.parametrize("key", [ZONE, "topology.kubernetes.io/region"])
def test_a_topology_key_reads_the_pods_own_label(key: str) -> None:
    s = spec({"topologyKey": key})
    assert "KAFKA_CLIENT_RACK" not in environment.config_data(s)
    assert rack_env(s) == [
        {
            "name": "KAFKA_CLIENT_RACK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{key}']"}},
        }
    ]


def test_a_literal_rack_is_in_the_configmap() -> None:
    s = spec({"id": "eu-west-1a"})
    data = environment.config_data(s)
    assert data["KAFKA_CLIENT_RACK"] == "eu-west-1a"
    assert rack_env(s) == []
    # and the recorder takes it
    assert Settings(_env_file=None, **data).KAFKA_CLIENT_RACK == "eu-west-1a"  # type: ignore[arg-type]


def test_changing_the_rack_rolls_the_pods() -> None:
    assert environment.config_hash(spec({"id": "a"})) != environment.config_hash(spec({"id": "b"}))


@pytest.mark.parametrize(
    ("rack", "message"),
    [
        ({"topologyKey": ZONE, "id": "a"}, r"exactly one of topologyKey and id"),
        ({}, None),  # empty: no rack
        ({"zone": "a"}, r"exactly one of topologyKey and id \(unknown: zone\)"),
        (
            {"topologyKey": "kubernetes.io/hostname"},
            r"spec\.kafka\.rack\.topologyKey must be one of",
        ),
        ({"topologyKey": "example.com/zone"}, r"must be one of topology\.kubernetes\.io/zone"),
        ({"id": "eu west"}, r"spec\.kafka\.rack\.id 'eu west' is not a rack name"),
        ({"id": "-a"}, r"is not a rack name"),
        ({"id": 3}, r"spec\.kafka\.rack\.id must be a string"),
        ("eu-west-1a", r"spec\.kafka\.rack must be an object"),
    ],
)
def test_anything_else_is_refused_with_the_expected_form(rack: Any, message: str | None) -> None:
    if message is None:
        assert spec(rack).kafka.rack is None
        return
    with pytest.raises(SpecError, match=message):
        spec(rack)


@pytest.mark.parametrize(
    ("rack", "valid"),
    [
        ({"topologyKey": ZONE}, True),
        ({"id": "eu-west-1a"}, True),
        ({"topologyKey": "kubernetes.io/hostname"}, False),
        ({"id": "eu west"}, False),
        ({"id": ""}, False),
    ],
)
def test_the_crd_schema_agrees(rack: dict[str, Any], valid: bool) -> None:
    doc = {
        "apiVersion": "datarecorder.dev/v1alpha1",
        "kind": "DataRecorder",
        "metadata": {"name": "rec", "namespace": "md"},
        "spec": {**BASE, "kafka": kafka(rack)},
    }
    errors = list(jsonschema.Draft7Validator(cr_schema()).iter_errors(doc))
    assert (errors == []) is valid, errors
