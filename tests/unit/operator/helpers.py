"""Shared loaders for the operator's unit tests: the CRD, the examples, parsed specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import Policy
from datarecorder_operator.spec import RecorderSpec

from tests.support.examples import EXAMPLES as EXAMPLES

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / "datarecorders.datarecorder.dev.yaml"
K8S_VERSION = "1.37"  # the newest that kubernetes-validate 1.37.0 ships
# examples/full.yaml names a ServiceAccount it manages (`recorder`): the restricted policy
# lets it only when listed, as the chart's policy.allowedServiceAccounts would.
EXAMPLES_POLICY = Policy(allowed_service_accounts=("recorder",))


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def crd() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(CRD_PATH)
    return doc


def cr_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(EXAMPLES / name)
    return doc


def example_spec(name: str) -> RecorderSpec:
    doc = example(name)
    return parse_spec(
        doc["metadata"]["name"], doc["metadata"]["namespace"], doc["spec"], EXAMPLES_POLICY
    )
