"""Every panel query of the shipped Grafana dashboard, run against a real Prometheus scraping a
real recorder during a drain (both stores, some dead letters), returns data. Grafana itself
cannot be built here, so its variables are substituted the way Grafana would."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.fixtures.stack import RecorderEnv, TopicFactory
from tests.integration.monitoring.prom import Prometheus, poll
from tests.integration.monitoring.rulefiles import ROOT
from tests.support.recorder_proc import RecorderProcess, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = ROOT / "dashboards" / "datarecorder.json"


def panel_queries(job: str, namespace: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted: the
    dashboard's $namespace/$job selectors narrowed to this test's recorder, $__rate_interval
    as Grafana computes it for a 1 s scrape interval (at least 4 scrapes; 15 s here)."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "15s")
                .replace("$namespace", namespace)
                .replace("$job", job)
            )
            out.append((panel["title"], expr))
    return out


def variable_queries(job: str, namespace: str) -> list[tuple[str, str]]:
    """The template variables' label_values(metric{...}, label) as the PromQL Grafana runs."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for var in doc["templating"]["list"]:
        definition = var.get("definition", "")
        if not definition.startswith("label_values("):
            continue
        inner = definition[len("label_values(") : -1]
        selector, _, label = inner.rpartition(",")
        selector = selector.replace("$namespace", namespace)
        out.append((f"variable {var['name']}", f"group by ({label.strip()}) ({selector})"))
    return out


async def test_every_dashboard_panel_returns_data_during_a_drain(
    prometheus: Prometheus,
    kafka_topics: TopicFactory,
    fresh_database: str,
    fresh_bucket: str,
    recorder_env: RecorderEnv,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3, dlq=True)
    env = recorder_env(
        database=fresh_database,
        bucket=fresh_bucket,
        topics=topics,
        BATCH_TIMEOUT_MS=200,
        S3_BATCH_TIMEOUT_SEC=2,
    )
    job, ns = unique_name, "monitoring-dashboard"
    # A backlog with dead letters, then a recorder that drains it while Prometheus scrapes.
    await asyncio.to_thread(
        produce, env, "--ticks", "30000", "--orderbooks", "3000", "--invalid-ratio", "0.02"
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        prometheus.add_targets(
            job, {f"127.0.0.1:{rec.port}": {"job": job, "namespace": ns, "pod": f"{job}-0"}}
        )
        feed = asyncio.create_task(
            asyncio.to_thread(produce, env, "--rate", "300", "--duration", "20")
        )
        queries = panel_queries(job, ns) + variable_queries(job, ns)
        assert len(queries) >= 15
        empty = {expr: title for title, expr in queries}  # the queries still without data

        def all_answered() -> bool:
            for expr in list(empty):
                if prometheus.query(expr):
                    del empty[expr]
            return not empty

        try:
            await asyncio.to_thread(poll, all_answered, timeout=90, what="every panel's data")
        except TimeoutError:
            pytest.fail(f"panels without data: {json.dumps(empty, indent=1)}\n{rec.tail()}")
        await feed  # ends by itself (--duration); a thread cannot be cancelled
    finally:
        rec.ensure_stopped()
