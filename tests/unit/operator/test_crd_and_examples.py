"""The CRD is a valid apiextensions/v1 object, and the examples pass or fail its schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import SpecError

from tests.support.examples import INVALID, VALID, refused_by
from tests.unit.operator.helpers import (
    CRD_PATH,
    EXAMPLES,
    EXAMPLES_POLICY,
    K8S_VERSION,
    cr_schema,
    crd,
    example,
    load_yaml,
)


def schema_errors(doc: dict[str, object]) -> list[str]:
    validator = jsonschema.Draft7Validator(cr_schema())
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(doc)
    ]


def test_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(crd(), K8S_VERSION, strict=True)


def test_crd_names_and_subresources_match_the_fixed_interface() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "datarecorder.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "DataRecorder"
    assert spec["names"]["plural"] == "datarecorders"
    assert spec["names"]["singular"] == "datarecorder"
    assert spec["names"]["shortNames"] == ["drec"]  # `dr` is Istio's DestinationRule
    assert "all" not in spec["names"].get("categories", [])  # kubectl delete all --all
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Replicas", "Lag", "State", "Age"]


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out.extend(_walk(sub, f"{path}.{key}"))
    items = schema.get("items")
    if isinstance(items, dict):
        out.extend(_walk(items, f"{path}[]"))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out.extend(_walk(extra, f"{path}{{}}"))
    return out


def test_schema_is_structural() -> None:
    # Structural: every node has a type, except int-or-string and preserve-unknown nodes.
    for path, node in _walk(cr_schema()):
        if path == ".metadata":
            continue
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path


@pytest.mark.parametrize("name", [p.name for p in VALID])
def test_examples_pass_the_schema_and_the_operator(name: str) -> None:
    doc = example(name)
    assert schema_errors(doc) == []
    parse_spec(doc["metadata"]["name"], doc["metadata"]["namespace"], doc["spec"], EXAMPLES_POLICY)


def test_there_are_invalid_examples() -> None:
    assert len(INVALID) >= 8


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_are_rejected_readably(path: Path) -> None:
    doc = load_yaml(path)
    errors = schema_errors(doc)
    try:
        parse_spec(doc["metadata"]["name"], "default", doc["spec"])
        operator_error = None
    except SpecError as exc:
        operator_error = str(exc)
    # The file's first comment line says who rejects it; the test holds it to that.
    if refused_by(path) == "schema":
        assert errors, f"{path.name} passed the schema"
    else:
        # jsonschema cannot run CEL; the operator mirrors each rule (an API server enforces it),
        # and refuses what the schema cannot see.
        assert errors == []
        assert operator_error is not None
    message = operator_error or errors[0]
    assert "spec." in message, message  # names the field
    assert len(message) < 300


def test_cel_rules_have_messages() -> None:
    for path, node in _walk(cr_schema()):
        for rule in node.get("x-kubernetes-validations") or []:
            assert rule["message"], (path, rule)


def test_examples_readme_names_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in [*VALID, *INVALID]:
        assert path.name in readme, path.name


def test_crd_file_is_the_one_named_by_the_group() -> None:
    assert CRD_PATH.name == f"{crd()['metadata']['name']}.yaml"


def test_every_cel_rule_names_its_field_and_reason() -> None:
    rules = [
        rule
        for _, node in _walk(cr_schema())
        for rule in node.get("x-kubernetes-validations") or []
        if "metadata.name" not in rule["rule"]  # a rule on metadata has no fieldPath there
    ]
    assert len(rules) >= 7
    for rule in rules:
        assert rule.get("fieldPath", "").startswith("."), rule
        assert rule.get("reason") in (
            "FieldValueInvalid",
            "FieldValueRequired",
            "FieldValueForbidden",
        ), rule


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("ghcr.io/example/datarecorder:0.1.0", True),
        ("registry.local:5000/md/datarecorder:v1.2-RC1", True),
        ("datarecorder:Latest_Build", True),
        ("ghcr.io/example/datarecorder@sha256:" + "a" * 64, True),
        ("ghcr.io/example/datarecorder:1.0@sha256:" + "0" * 64, True),
        ("GHCR.io/example/datarecorder:1", False),
        ("ghcr.io/example/datarecorder:", False),
        ("ghcr.io/example/datarecorder:-x", False),
    ],
)
def test_image_pattern(image: str, ok: bool) -> None:
    pattern = cr_schema()["properties"]["spec"]["properties"]["image"]["pattern"]
    assert bool(re.match(pattern, image)) is ok
