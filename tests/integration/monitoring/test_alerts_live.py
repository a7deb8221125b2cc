"""The chart's alert rules evaluated by a real Prometheus scraping a real recorder: a database
outage under a steady feed fires DataRecorderStoreUnhealthy and DataRecorderLagGrowing, both
resolve once the database is back, and a recorder that dies fires DataRecorderDown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.integration.monitoring.prom import Prometheus, poll
from tests.integration.monitoring.rulefiles import chart_groups
from tests.support.recorder_proc import RecorderProcess, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Short `for:` and window through the chart's values (what a user would set), so the test sees
# pending -> firing -> resolved in seconds; the expressions are the shipped ones.
FOR = "5s"
LIVE_VALUES = (
    f"prometheusRule.alerts.DataRecorderStoreUnhealthy.for={FOR}",
    f"prometheusRule.alerts.DataRecorderLagGrowing.for={FOR}",
    "prometheusRule.alerts.DataRecorderLagGrowing.threshold=1000",
    "prometheusRule.alerts.DataRecorderLagGrowing.window=10s",
    f"prometheusRule.alerts.DataRecorderDown.for={FOR}",
)


def load_live_rules(prom: Prometheus, name: str) -> None:
    groups = chart_groups(*LIVE_VALUES)
    for group in groups:
        group["name"] = f"{group['name']}-{name}"
    prom.load_rules(name, groups)


async def wait_alert(
    prom: Prometheus, alertname: str, *, firing: bool, limit_s: float, **labels: str
) -> float:
    """Seconds until `alertname` with `labels` is firing (or, with firing=False, gone)."""
    started = time.monotonic()

    def check() -> bool:
        active = prom.alerts(alertname=alertname, **labels)
        if firing:
            return any(a["state"] == "firing" for a in active)
        return not active

    await asyncio.to_thread(
        poll, check, timeout=limit_s, what=f"{alertname} {labels} firing={firing}"
    )
    return time.monotonic() - started


async def test_db_outage_and_backlog_fire_then_resolve(
    prometheus: Prometheus,
    stack_faults: Stack,
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    unique_name: str,
    tmp_path: Path,
) -> None:
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3, dlq=True)
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        S3_WRITE_ENABLED="false",
        BATCH_TIMEOUT_MS=200,
        MAX_BUFFER_SIZE=5000,
    )
    job, ns = unique_name, "monitoring-live"
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    try:
        prometheus.add_targets(
            job, {f"127.0.0.1:{rec.port}": {"job": job, "namespace": ns, "pod": f"{job}-0"}}
        )
        load_live_rules(prometheus, job)
        await asyncio.to_thread(
            poll,
            lambda: prometheus.value(f'up{{job="{job}"}}') == 1,
            timeout=60,
            what="Prometheus to scrape the recorder",
        )
        await asyncio.to_thread(produce, env, "--ticks", "2000", "--orderbooks", "200")
        await asyncio.to_thread(
            poll,
            lambda: (
                prometheus.value(f'sum(datarecorder_lag_records{{job="{job}",sink="timescaledb"}})')
                == 0
            ),
            timeout=120,
            what="the first records to be stored (lag 0)",
        )
        assert prometheus.alerts(job=job) == [], "alerts before the outage"

        # A steady feed into a recorder whose database is down: unhealthy, and lag grows.
        feed = asyncio.create_task(
            asyncio.to_thread(produce, env, "--rate", "400", "--duration", "60")
        )
        await stack_faults.astop("postgres")
        unhealthy_after = await wait_alert(
            prometheus,
            "DataRecorderStoreUnhealthy",
            firing=True,
            limit_s=90,
            job=job,
            sink="timescaledb",
        )
        lag_after = await wait_alert(
            prometheus,
            "DataRecorderLagGrowing",
            firing=True,
            limit_s=90,
            job=job,
            sink="timescaledb",
        )
        print(
            f"outage: StoreUnhealthy firing after {unhealthy_after:.1f}s, "
            f"LagGrowing after {unhealthy_after + lag_after:.1f}s (for: {FOR})"
        )

        await stack_faults.astart("postgres")
        healthy_after = await wait_alert(
            prometheus,
            "DataRecorderStoreUnhealthy",
            firing=False,
            limit_s=120,
            job=job,
            sink="timescaledb",
        )
        drained_after = await wait_alert(
            prometheus,
            "DataRecorderLagGrowing",
            firing=False,
            limit_s=180,
            job=job,
            sink="timescaledb",
        )
        print(
            f"restored: StoreUnhealthy resolved after {healthy_after:.1f}s, "
            f"LagGrowing after {healthy_after + drained_after:.1f}s"
        )
        await feed  # ends by itself (--duration); a thread cannot be cancelled

        # A recorder that dies: its scrapes fail and DataRecorderDown fires.
        rec.kill()
        down_after = await wait_alert(
            prometheus, "DataRecorderDown", firing=True, limit_s=60, job=job
        )
        print(f"killed: DataRecorderDown firing after {down_after:.1f}s")
    finally:
        rec.ensure_stopped()
