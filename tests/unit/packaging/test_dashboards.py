"""Grafana dashboard and Prometheus rules use only metrics the recorder exports, in valid PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml
from datarecorder_operator.metrics import REGISTRY as OPERATOR_REGISTRY
from prometheus_client.metrics_core import Metric

from recorder.runtime.metrics import ALL_METRIC_NAMES, REGISTRY
from tests.unit.packaging.helpers import ROOT

# Digits too: with `[a-z_]+` alone, datarecorder_s3_bytes_uploaded_total would read as
# "datarecorder_s".
METRIC = re.compile(r"datarecorder_[a-z0-9_]+")
# Grafana's variables, replaced by what Grafana would put there, so the PromQL parses.
GRAFANA_VARS = {"$__rate_interval": "5m", "$namespace": "default", "$job": "recorder"}


def _strings_under(obj: Any, keys: tuple[str, ...]) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from _strings_under(value, keys)
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings_under(item, keys)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "dashboards" / "datarecorder.json").read_text())
    return loaded


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "dashboards" / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    return list(_strings_under(dashboard()["panels"], ("expr",)))


def variable_queries() -> list[str]:
    return list(_strings_under(dashboard()["templating"], ("definition", "query")))


def rule_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def exposed_names(families: list[Metric]) -> set[str]:
    """The sample names a scrape shows for these families (counters get _total, etc.)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    return {f.name + s for f in families for s in suffixes[f.type]}


def kube_state_metrics_names() -> set[str]:
    """Series kube-state-metrics exports with dashboards/kube-state-metrics.yaml (for alerts
    on the DataRecorder resource itself, which no recorder pod can report)."""
    doc = yaml.safe_load((ROOT / "dashboards" / "kube-state-metrics.yaml").read_text())
    return {
        f"{res['metricNamePrefix']}_{metric['name']}"
        for res in doc["spec"]["resources"]
        for metric in res["metrics"]
    }


def operator_metric_names() -> set[str]:
    """Series the operator exports (for alerts on the operator itself)."""
    return exposed_names(list(OPERATOR_REGISTRY.collect()))


def test_all_metric_names_is_what_the_registry_exposes() -> None:
    """ALL_METRIC_NAMES is the reference of the next tests: it must not drift from the code."""
    assert exposed_names(list(REGISTRY.collect())) == ALL_METRIC_NAMES


@pytest.mark.parametrize(
    ("source", "exprs"),
    [
        ("dashboard panels", dashboard_exprs()),
        ("dashboard variables", variable_queries()),
        ("alert rules", rule_exprs()),
    ],
)
def test_only_exported_metrics_are_used(source: str, exprs: list[str]) -> None:
    assert exprs, f"no PromQL found in the {source}"
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used, f"the {source} use no datarecorder metric"
    known = ALL_METRIC_NAMES | (
        kube_state_metrics_names() | operator_metric_names() if source == "alert rules" else set()
    )
    assert used <= known, f"{source} use unknown metrics: {sorted(used - known)}"


def test_metric_name_regex_catches_a_misspelt_name() -> None:
    used = set(METRIC.findall("rate(datarecorder_records_writen_total[5m])"))
    assert used == {"datarecorder_records_writen_total"} and not used <= ALL_METRIC_NAMES


@pytest.mark.parametrize("expr", dashboard_exprs() + rule_exprs())
def test_promql_parses(expr: str) -> None:
    promql_parser.parse(grafana_to_promql(expr))


def test_dashboard_has_the_on_call_panels() -> None:
    panels = {p["title"]: " ".join(_strings_under(p, ("expr",))) for p in dashboard()["panels"]}
    needed = {
        "records/s per topic and sink": ("datarecorder_records_written_total", "by (topic, sink)"),
        "lag per partition and sink": (
            "datarecorder_partition_lag_records",
            "by (topic, partition, sink)",
        ),
        "flush duration p50": (
            "histogram_quantile(0.5,",
            "datarecorder_flush_duration_seconds_bucket",
        ),
        "flush duration p99": (
            "histogram_quantile(0.99,",
            "datarecorder_flush_duration_seconds_bucket",
        ),
        "buffer fill": (
            "datarecorder_buffer_records",
            "/ on (instance)",
            "datarecorder_buffer_limit_records",
        ),
        "dead letters/s": ("rate(datarecorder_dead_letters_total",),
        "S3 bytes/s": ("rate(datarecorder_s3_bytes_uploaded_total",),
        "sink health": ("datarecorder_sink_healthy",),
    }
    for what, fragments in needed.items():
        assert any(all(f in exprs for f in fragments) for exprs in panels.values()), what


def test_every_panel_uses_the_datasource_variable() -> None:
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_lag_dead_letters_store_and_stalled_flush() -> None:
    by_name = {rule["alert"]: str(rule["expr"]) for rule in rules()}
    assert "datarecorder_lag_records" in by_name["DataRecorderLagGrowing"]
    assert "offset" in by_name["DataRecorderLagGrowing"]  # compares with the past: growing
    assert "datarecorder_dead_letters_total" in by_name["DataRecorderDeadLetterSpike"]
    assert "datarecorder_sink_healthy" in by_name["DataRecorderStoreUnhealthy"]
    stalled = by_name["DataRecorderFlushStalled"]
    assert "datarecorder_last_flush_timestamp_seconds" in stalled
    assert "datarecorder_lag_records" in stalled and "> 0" in stalled
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
