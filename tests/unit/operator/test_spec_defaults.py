"""The CRD's defaults, `parse_spec`'s defaults and the recorder's own defaults agree.

The API server fills the CRD's defaults in; an emulator, `operator render` or an older object
does not, and then `parse_spec` decides. Both must give the same recorder, and where the spec
leaves a setting to its default, the recorder's Settings must have that default too
(test_environment_contract.py).
"""

from __future__ import annotations

import copy
from typing import Any

from datarecorder_operator.parsing import parse_spec

from tests.unit.operator.helpers import cr_schema

MINIMAL: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["kafka:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
# Objects whose presence means something (a protocol, a credential): an API server never
# creates them from defaults, so neither does the walk.
PRESENCE_MEANS_SOMETHING = {"spec.kafka.tls", "spec.kafka.sasl"}


def with_crd_defaults(value: dict[str, Any], schema: dict[str, Any], path: str) -> dict[str, Any]:
    """Structural defaulting as the API server does it: a missing property with a default is
    set; objects are descended into when present, or created when something below them has a
    default and they have no required fields."""
    out = copy.deepcopy(value)
    for key, sub in (schema.get("properties") or {}).items():
        where = f"{path}.{key}"
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if sub.get("type") != "object" or where in PRESENCE_MEANS_SOMETHING:
            continue
        if key in out and isinstance(out[key], dict):
            out[key] = with_crd_defaults(out[key], sub, where)
        elif key not in out and not sub.get("required") and _has_defaults(sub):
            out[key] = with_crd_defaults({}, sub, where)
    return out


def _has_defaults(schema: dict[str, Any]) -> bool:
    return any(
        "default" in sub or (sub.get("type") == "object" and _has_defaults(sub))
        for sub in (schema.get("properties") or {}).values()
    )


def test_parse_spec_defaults_equal_the_crds() -> None:
    spec_schema = cr_schema()["properties"]["spec"]
    defaulted = with_crd_defaults(MINIMAL, spec_schema, "spec")
    assert defaulted != MINIMAL  # the walk did fill something in
    assert defaulted["timescaledb"]["database"] == "marketdata"
    assert parse_spec("rec", "md", defaulted) == parse_spec("rec", "md", MINIMAL)
