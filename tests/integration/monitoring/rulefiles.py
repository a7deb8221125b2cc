"""Alert rules as the tests load them: from dashboards/alerts.yaml or rendered by the chart.

Owns finding promtool/Prometheus (scripts/monitoring bin), rendering the chart's PrometheusRule
with values, and writing rule groups back as a rules file Prometheus and promtool read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "dashboards" / "alerts.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
CHART = ROOT / "helm" / "datarecorder"
MONITORING = ROOT / "scripts" / "monitoring"


def tool(name: str) -> str:
    """The cached binary's path (scripts/monitoring fetches Prometheus in seconds if missing)."""
    res = subprocess.run(
        ["bash", str(MONITORING), "bin", name],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"scripts/monitoring bin {name} failed:\n{res.stderr}{res.stdout}")
    return res.stdout.strip().splitlines()[-1]


def file_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


def chart_groups(*set_args: str) -> list[dict[str, Any]]:
    """The groups of the chart's PrometheusRule, rendered with `--set` arguments."""
    args = ["--set", "prometheusRule.force=true"]
    for item in set_args:
        args += ["--set", item]
    res = subprocess.run(
        [str(ROOT / "scripts" / "helm"), "template", "t", str(CHART), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{res.stderr}")
    for doc in yaml.safe_load_all(res.stdout):
        if doc and doc.get("kind") == "PrometheusRule":
            groups: list[dict[str, Any]] = doc["spec"]["groups"]
            return groups
    raise AssertionError("helm template rendered no PrometheusRule")


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL with `# threshold` comments) as block scalars, as written."""


_LiteralDumper.add_representer(
    str,
    lambda dumper, s: dumper.represent_scalar(
        "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None
    ),
)


def write_rules(groups: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.dump({"groups": groups}, Dumper=_LiteralDumper, sort_keys=False))
    return path


def without_descriptions(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups with the prose `description` annotations dropped (see alerts_test.yaml)."""
    out = []
    for group in groups:
        rules = []
        for rule in group["rules"]:
            notes = {k: v for k, v in rule.get("annotations", {}).items() if k != "description"}
            rules.append({**rule, "annotations": notes})
        out.append({**group, "rules": rules})
    return out


def alert_names(groups: list[dict[str, Any]]) -> list[str]:
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
