"""Quantity parsing and the drift check's by-value comparison of the quantities servers rewrite.

The canonical forms below are what kube-apiserver stored for these inputs (see
tests/integration/k8s/test_operator.py, which checks the same against a real server).
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from datarecorder_operator import drift, quantity, rendering, workload
from datarecorder_operator.parsing import parse_spec

from tests.unit.operator.helpers import example_spec


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("0.5", Decimal("0.5")),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("1Gi", Decimal(1024**3)),
        ("1024Mi", Decimal(1024**3)),
        ("10k", Decimal(10_000)),
        ("1e3", Decimal(1000)),
        ("1E-3", Decimal("0.001")),
        ("-2", Decimal(-2)),
        ("+3M", Decimal(3_000_000)),
        ("7n", Decimal("7e-9")),
        (2, Decimal(2)),
        ("8Ei", Decimal(2**63)),
        ("2E", Decimal(2 * 10**18)),
        ("2e1", Decimal(20)),
        ("123456789012345678901234567890Ki", Decimal(123456789012345678901234567890 * 1024)),
    ],
)
def test_parse_is_exact(text: str | int, value: Decimal) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize("text", ["", "1.2.3", "1Kb", "1 Gi", "Mi", "1ki", "0x10", "1e", True])
def test_parse_rejects_what_is_not_a_quantity(text: str | bool) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.parse(text)


def test_parse_reports_an_exponent_out_of_range_as_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        quantity.parse("1e9999999999")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("0.5", "500m"), ("1024Mi", "1Gi"), ("1000m", "1"), ("10000", "10k"), (10000, "10k"),
     ("1.5Gi", "1536Mi"), ("0.1n", "1n"), ("1e3", "1k")],
)  # fmt: skip
def test_same_sees_the_servers_canonical_form_as_equal(given: str | int, canonical: str) -> None:
    assert quantity.same(given, canonical)
    assert quantity.same(canonical, given)


@pytest.mark.parametrize(
    ("a", "b"), [("500m", "501m"), ("1Gi", "1G"), ("1k", "1Ki"), ("1n", "2n"), ("x", "1")]
)
def test_same_tells_different_values_apart(a: str, b: str) -> None:
    assert not quantity.same(a, b)


def test_same_compares_non_quantities_as_themselves() -> None:
    assert quantity.same("abc", "abc")
    assert not quantity.same(None, "1")
    assert not quantity.same({"a": 1}, "1")


def _canonicalized(manifest: dict[str, Any], path: tuple[str | int, ...], text: str) -> None:
    node: Any = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = text


def test_drift_ignores_resources_the_server_stored_canonically() -> None:
    raw = {
        "image": "r:1",
        "kafka": {"brokers": ["k:9092"], "topics": ["t.tick"]},
        "timescaledb": {"host": "db", "passwordSecret": {"name": "s"}},
        "resources": {
            "requests": {"cpu": "0.5", "memory": "1024Mi"},
            "limits": {"cpu": "1000m", "memory": "2048Mi"},
        },
    }
    desired = workload.render_deployment(parse_spec("r", "ns", raw), 1)
    actual = copy.deepcopy(desired)
    resources = ("spec", "template", "spec", "containers", 0, "resources")
    for kind, res, text in [
        ("requests", "cpu", "500m"),
        ("requests", "memory", "1Gi"),
        ("limits", "cpu", "1"),
        ("limits", "memory", "2Gi"),
    ]:
        _canonicalized(actual, (*resources, kind, res), text)
    assert not drift.needs_apply(desired, actual)

    _canonicalized(actual, (*resources, "limits", "cpu"), "2")  # a real edit is still drift
    assert drift.needs_apply(desired, actual)


def test_drift_ignores_an_hpa_target_the_server_stored_canonically() -> None:
    desired = rendering.render_hpa(example_spec("full.yaml"))
    target_path = ("spec", "metrics", 0, "pods", "target", "averageValue")
    target = quantity.parse(desired["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    assert target >= 1000 and target % 1000 == 0  # so "k" is the canonical form below
    actual = copy.deepcopy(desired)
    _canonicalized(actual, target_path, f"{target // 1000}k")
    assert not drift.needs_apply(desired, actual)
    _canonicalized(actual, target_path, f"{target // 1000 + 1}k")
    assert drift.needs_apply(desired, actual)


def test_quantities_compare_by_value_only_where_the_server_keeps_quantities() -> None:
    desired = rendering.render_configmap(example_spec("minimal.yaml"))
    actual = copy.deepcopy(desired)
    actual["data"]["BATCH_SIZE"] = "1k"  # the recorder reads "1k" as text, not as 1000
    assert desired["data"]["BATCH_SIZE"] == "1000"
    assert drift.needs_apply(desired, actual)
