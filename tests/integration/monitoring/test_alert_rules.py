"""The shipped alert rules evaluated by promtool: every alert fires and stays quiet as its
unit tests (alerts_test.yaml) say, both as dashboards/alerts.yaml and as the chart renders it;
the chart's per-alert values (for, threshold, window, enabled, runbookBaseUrl) take effect."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.monitoring.rulefiles import (
    CHART,
    UNIT_TESTS,
    alert_names,
    chart_groups,
    file_groups,
    tool,
    without_descriptions,
    write_rules,
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def run_unit_tests(
    groups: list[dict[str, Any]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    write_rules(without_descriptions(groups), tmp_path / "alerts.yaml")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return promtool("test", "rules", str(tmp_path / UNIT_TESTS.name))


def by_alert(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alert_names(file_groups()))
    assert names - fires == set(), "alerts without a case where they fire"
    assert names - quiet == set(), "alerts without a case where they stay quiet"


def test_rules_file_passes_promtool_check() -> None:
    res = promtool("check", "rules", str(CHART.parents[1] / "dashboards" / "alerts.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_unit_tests_pass_on_the_rules_file(tmp_path: Path) -> None:
    res = run_unit_tests(file_groups(), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_unit_tests_pass_on_the_chart_rendering_with_default_values(tmp_path: Path) -> None:
    groups = chart_groups()
    assert alert_names(groups) == alert_names(file_groups())
    res = run_unit_tests(groups, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The check can fail: a lag threshold above the test's lag silences the firing case."""
    groups = chart_groups("prometheusRule.alerts.DataRecorderLagGrowing.threshold=1000000")
    res = run_unit_tests(groups, tmp_path)
    assert res.returncode != 0
    assert "DataRecorderLagGrowing" in res.stdout + res.stderr


def test_values_defaults_are_the_rules_file_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["alerts"]
    rules = by_alert(file_groups())
    assert set(values) == set(rules)
    for name, wanted in values.items():
        rule = rules[name]
        assert wanted["enabled"] is True, name
        assert wanted["for"] == rule["for"], name
        lines = str(rule["expr"]).splitlines()
        threshold = [ln for ln in lines if ln.rstrip().endswith("# threshold")]
        window = [ln for ln in lines if ln.rstrip().endswith("# window")]
        assert ("threshold" in wanted) == bool(threshold), name
        assert ("window" in wanted) == bool(window), name
        if threshold:
            number = threshold[0].split("#")[0].split()[-1]
            assert float(number) == float(wanted["threshold"]), name
        if window:
            assert f"offset {wanted['window']})" in window[0], name


def test_values_change_for_threshold_window_enabled_and_runbook(tmp_path: Path) -> None:
    groups = chart_groups(
        "prometheusRule.alerts.DataRecorderLagGrowing.for=30s",
        "prometheusRule.alerts.DataRecorderLagGrowing.threshold=250",
        "prometheusRule.alerts.DataRecorderLagGrowing.window=1m",
        "prometheusRule.alerts.DataRecorderNotReady.enabled=false",
        "prometheusRule.runbookBaseUrl=https://docs.example.com/recorder/",
    )
    rules = by_alert(groups)
    lag = rules["DataRecorderLagGrowing"]
    assert lag["for"] == "30s"
    assert "> 250  # threshold" in lag["expr"] and "> 10000" not in lag["expr"]
    assert "offset 1m)  # window" in lag["expr"] and "offset 15m" not in lag["expr"]
    assert "DataRecorderNotReady" not in rules
    assert rules["DataRecorderDown"]["annotations"]["runbook_url"] == (
        "https://docs.example.com/recorder/docs/runbooks.md#datarecorderdown"
    )
    res = promtool("check", "rules", str(write_rules(groups, tmp_path / "rendered.yaml")))
    assert res.returncode == 0, res.stdout + res.stderr


def test_runbook_anchors_exist() -> None:
    runbooks = (CHART.parents[1] / "docs" / "runbooks.md").read_text().lower()
    for name, rule in by_alert(file_groups()).items():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md" and anchor == name.lower(), name
        assert f"## {name.lower()}" in runbooks, f"docs/runbooks.md has no section {name}"


@pytest.mark.parametrize("bad", ["prometheusRule.alerts.DataRecorderDown.threshold=3"])
def test_a_threshold_for_an_alert_without_one_is_refused(bad: str) -> None:
    with pytest.raises(RuntimeError, match=r"DataRecorderDown.threshold"):
        chart_groups(bad)
