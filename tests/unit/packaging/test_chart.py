"""The Helm chart without Helm: synced copies, values schema, the checker's own rules.

scripts/check-chart renders the chart with Helm; these tests keep its inputs and its
validation logic honest.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.packaging.helpers import ROOT, check_chart, dockerfile_stages, pyproject

CHART = ROOT / "helm" / "datarecorder"
cc = check_chart()


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def values_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text()))


def full_values() -> dict[str, Any]:
    loaded: dict[str, Any] = load(CHART / "ci" / "full-values.yaml")
    return loaded


def test_chart_copies_equal_their_sources() -> None:
    assert cc.out_of_sync(ROOT, cc.rules_file_text(cc.operator_rules())) == []


def test_out_of_sync_reports_a_drifted_copy(tmp_path: Path) -> None:
    rules_text = cc.rules_file_text(cc.operator_rules())
    for src, dst in cc.SYNCED:
        for path in (src, dst):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes((ROOT / src).read_bytes())
    (tmp_path / cc.RULES_FILE).write_text(rules_text)
    assert cc.out_of_sync(tmp_path, rules_text) == []
    crd_copy = tmp_path / cc.SYNCED[0][1]
    crd_copy.write_text(crd_copy.read_text() + "# edited in the chart\n")
    (tmp_path / cc.RULES_FILE).write_text(rules_text.replace("delete", "deletecollection"))
    problems = cc.out_of_sync(tmp_path, rules_text)
    assert len(problems) == 2
    assert "differs from crds/datarecorders.datarecorder.dev.yaml" in problems[0]
    assert "rbac.py" in problems[1]


def test_rules_file_round_trips_the_operators_rules() -> None:
    rules = cc.operator_rules()
    assert load(ROOT / cc.RULES_FILE) == rules
    assert {"apiGroups", "resources", "verbs"} == {k for rule in rules for k in rule}


@pytest.mark.parametrize("name", ["values.yaml", "ci/full-values.yaml"])
def test_values_files_satisfy_the_schema(name: str) -> None:
    merged = load(CHART / "values.yaml")
    if name != "values.yaml":
        merged = _merge(merged, load(CHART / name))
    errors = [e.message for e in values_validator().iter_errors(merged)]
    assert errors == []


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's value coalescing: maps merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"imagee": {"tag": "1"}}, "unknown top-level key"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pull policy outside the enum"),
        (
            {"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
            "two operators without leader election",
        ),
        ({"operator": {"replicas": "1"}}, "a string where an integer belongs"),
        ({"operator": {"logLevel": "TRACE"}}, "a level the operator CLI cannot express"),
        ({"operator": {"watchNamespace": "Not_A_Namespace"}}, "not a DNS label"),
        ({"operator": {"serviceMonitor": {"interval": "often"}}}, "not a duration"),
        ({"recorder": {"enabled": True}}, "recorder without kafka and timescaledb"),
        ({"recorder": {"name": "x" * 57}}, "children names would exceed 63 characters"),
        ({"dashboards": {"labels": {"grafana_dashboard": 1}}}, "label values are strings"),
    ],
)
def test_schema_rejects_wrong_values(override: dict[str, Any], why: str) -> None:
    values = _merge(load(CHART / "values.yaml"), override)
    assert list(values_validator().iter_errors(values)), why


def test_full_values_recorder_is_a_valid_datarecorder() -> None:
    crd = load(ROOT / "crds" / "datarecorders.datarecorder.dev.yaml")
    spec = {"image": "registry.example.com/market/datarecorder:0.1.0"}
    spec |= full_values()["recorder"]["spec"]
    doc: dict[str, Any] = {
        "apiVersion": "datarecorder.dev/v1alpha1",
        "kind": "DataRecorder",
        "metadata": {"name": full_values()["recorder"]["name"]},
        "spec": spec,
    }
    assert cc.check_custom_resource(doc, crd) == []
    broken = copy.deepcopy(doc)
    broken["spec"]["timescaledb"]["port"] = 70000
    del broken["spec"]["kafka"]
    errors = cc.check_custom_resource(broken, crd)
    assert len(errors) == 2 and any("70000" in e for e in errors)


def test_checker_rejects_invalid_kubernetes_objects() -> None:
    crd = load(ROOT / "crds" / "datarecorders.datarecorder.dev.yaml")
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    assert cc.check_documents([deployment], crd) == []
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    (error,) = cc.check_documents([typo], crd)
    assert "imagePullPolicyy" in error
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(rate(x[5m])"}]}]},
    }
    (error,) = cc.check_documents([rule], crd)
    assert "PromQL does not parse" in error


def test_rendered_yaml_with_a_duplicate_key_is_refused() -> None:
    assert cc.load_documents("a: 1\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
    with pytest.raises(yaml.YAMLError, match="duplicate key 'app'"):
        cc.load_documents("labels:\n  app: x\n  app: y\n")


def test_rbac_mismatch_names_the_missing_grant() -> None:
    rules = cc.operator_rules()
    role = {"kind": "ClusterRole", "metadata": {"name": "op"}, "rules": copy.deepcopy(rules)}
    assert cc.rbac_mismatch([role], rules) == []
    role["rules"] = role["rules"][1:]
    (error,) = cc.rbac_mismatch([role], rules)
    assert "only in rbac.py" in error and rules[0]["resources"][0] in error


def test_app_version_is_the_package_version() -> None:
    """image.tag defaults to appVersion, so the chart installs the image of its own release."""
    assert load(CHART / "Chart.yaml")["appVersion"] == pyproject()["project"]["version"]


def test_pods_run_as_the_images_user() -> None:
    final = dockerfile_stages((ROOT / "Dockerfile").read_text())[-1]
    uid = int(final.args_of("USER")[-1].split(":")[0])
    pod = load(CHART / "values.yaml")["operator"]["podSecurityContext"]
    assert pod["runAsUser"] == uid and pod["runAsNonRoot"] is True


def test_operator_accepts_the_arguments_the_chart_passes() -> None:
    from datarecorder_operator.cli import parser

    args = parser().parse_args(
        ["run", "--namespace=market-data", "--liveness=http://0.0.0.0:8081/healthz", "--verbose"]
    )
    assert args.namespace == ["market-data"] and args.verbose
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    template = (CHART / "templates" / "deployment.yaml").read_text()
    for flag in ("--namespace=", "--liveness=http://0.0.0.0:", "--verbose"):
        assert flag in template


def _leaf_values(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values a user sets; free-form maps count as one value."""
    free_form = {"resources", "podSecurityContext", "securityContext", "labels", "spec", "alerts"}
    out = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and key not in free_form:
            out += _leaf_values(value, path)
        else:
            out.append(path)
    return out


def test_readme_documents_every_value() -> None:
    readme = (ROOT / "helm" / "README.md").read_text()
    leaves = _leaf_values(load(CHART / "values.yaml"))
    assert len(leaves) > 40
    missing = [leaf for leaf in leaves if f"| `{leaf}` |" not in readme]
    assert missing == []
