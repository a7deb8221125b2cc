"""The HPA path on the real control plane: recorders as host processes for the kwok pods of a
DataRecorder's Deployment, Prometheus scraping them with the pods' namespace/pod labels, the
prometheus-adapter serving datarecorder_lag_records with the README's rule, and the HPA that
the operator renders reading it and scaling up on a Kafka backlog; with the adapter stopped the
HPA says why. The Deployment and HPA are the operator's own rendering (its pure functions), so
no operator process is needed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from datarecorder_operator.naming import child_name
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.rendering import render_children

from tests.fixtures.k8s import K8s
from tests.fixtures.stack import RecorderEnv, TopicFactory
from tests.integration.k8s.manifests import MINIMAL_SPEC
from tests.integration.monitoring.prom import Prometheus, poll, run_monitoring
from tests.support.recorder_proc import RecorderProcess, produce

pytestmark = [pytest.mark.integration, pytest.mark.k8s, pytest.mark.slow]

PARTITIONS = 3
TARGET_LAG = 2000  # per replica: the backlog below asks for far more than the cap
# A store with a fixed cost per row (a row trigger that sleeps 3 ms): one recorder writes about
# 300 ticks/s, so the backlog below takes it about a minute and the HPA's 5 s period sees the
# lag: the shape of a store-bound recorder. (A sleep per statement would not do: one flush
# writes everything buffered in one COPY.)
SLOW_STORE_SQL = """
CREATE FUNCTION slow_store() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(0.003); RETURN NEW; END $$;
CREATE TRIGGER slow_store BEFORE INSERT ON tick_data
  FOR EACH ROW EXECUTE FUNCTION slow_store();
"""


async def slow_down_store(env: dict[str, str]) -> None:
    import asyncpg

    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder.cli", "migrate", env=env
    )
    assert await migrate.wait() == 0
    conn = await asyncpg.connect(
        host=env["TIMESCALEDB_HOST"],
        port=int(env["TIMESCALEDB_PORT"]),
        user=env["TIMESCALEDB_USER"],
        password=env["TIMESCALEDB_PASSWORD"],
        database=env["TIMESCALEDB_DB"],
    )
    try:
        await conn.execute(SLOW_STORE_SQL)
    finally:
        await conn.close()


def running_pods(k8s: K8s, namespace: str, app: str) -> list[str]:
    pods = k8s.get_json("pods", "-l", f"app.kubernetes.io/instance={app}", namespace=namespace)
    return sorted(
        p["metadata"]["name"]
        for p in pods["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    )


def custom_metric(k8s: K8s, namespace: str) -> list[dict[str, Any]]:
    path = (
        f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/*/"
        f"datarecorder_lag_records?metricLabelSelector={quote('sink=timescaledb')}"
    )
    res = k8s.kubectl("get", "--raw", path, check=False)
    if res.returncode != 0:
        return []
    items: list[dict[str, Any]] = json.loads(res.stdout)["items"]
    return items


def hpa_condition(k8s: K8s, namespace: str, name: str, ctype: str) -> dict[str, Any] | None:
    hpa = k8s.get_json("hpa", name, namespace=namespace)
    for cond in hpa.get("status", {}).get("conditions", []):
        if cond["type"] == ctype:
            found: dict[str, Any] = cond
            return found
    return None


async def test_hpa_scales_on_recorder_lag_through_the_adapter(
    k8s: K8s,
    k8s_namespace: str,
    prometheus: Prometheus,
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    unique_name: str,
    tmp_path: Path,
) -> None:
    up = run_monitoring("adapter-up")
    assert up.returncode == 0, up.stderr + up.stdout
    ns, name = k8s_namespace, "rec"
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=PARTITIONS, dlq=True)
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        S3_WRITE_ENABLED="false",
        DB_WRITE_WORKERS=1,
    )
    await slow_down_store(env)
    spec = parse_spec(
        name,
        ns,
        {
            **MINIMAL_SPEC,
            "autoscaling": {
                "enabled": True,
                "mode": "hpa",
                "minReplicas": 1,
                "maxReplicas": PARTITIONS,
                "targetLagPerReplica": TARGET_LAG,
                "scaleDownStabilizationSeconds": 0,
            },
        },
    )
    for manifest in render_children(spec, service_monitor_available=False):
        k8s.apply(manifest, namespace=ns)

    recorders: dict[str, RecorderProcess] = {}

    def sync_recorders() -> list[str]:
        """One recorder per Running kwok pod, scraped under that pod's name (as a
        ServiceMonitor would label it); recorders of pods that went away are stopped."""
        pods = running_pods(k8s, ns, name)
        for pod in pods:
            if pod not in recorders:
                rec = RecorderProcess(env, tmp_path / f"{pod}.log").start(wait_ready=None)
                recorders[pod] = rec
        for pod in [p for p in recorders if p not in pods]:
            recorders.pop(pod).terminate()
        prometheus.add_targets(
            unique_name,
            {
                f"127.0.0.1:{rec.port}": {
                    "job": child_name(spec.name, "Deployment"),
                    "namespace": ns,
                    "pod": pod,
                }
                for pod, rec in recorders.items()
            },
        )
        return pods

    timeline: list[tuple[float, int, float]] = []
    started = time.monotonic()

    def sample() -> tuple[int, float]:
        deployment = k8s.get_json("deployment", child_name(spec.name, "Deployment"), namespace=ns)
        replicas = deployment["spec"].get("replicas", 0)
        lag = prometheus.value(
            f'sum(datarecorder_lag_records{{namespace="{ns}",sink="timescaledb"}})'
        )
        timeline.append((time.monotonic() - started, replicas, lag or 0.0))
        return replicas, lag or 0.0

    try:
        # The backlog first: the first recorder finds it and reports it as lag.
        await asyncio.to_thread(produce, env, "--ticks", "20000", "--orderbooks", "600")
        await asyncio.to_thread(
            poll, lambda: len(sync_recorders()) == 1, timeout=120, what="the first pod Running"
        )
        items = await asyncio.to_thread(
            poll, lambda: custom_metric(k8s, ns), timeout=120, what="the custom metrics API"
        )
        assert {i["describedObject"]["name"] for i in items} <= set(recorders)

        def scaled_up() -> bool:
            sync_recorders()
            replicas, _ = sample()
            return replicas == PARTITIONS

        await asyncio.to_thread(
            poll, scaled_up, timeout=180, what="the HPA to scale up", interval=2
        )

        def scaled_down() -> bool:
            sync_recorders()
            replicas, lag = sample()
            return replicas == 1 and lag == 0

        await asyncio.to_thread(
            poll, scaled_down, timeout=400, what="the HPA to scale down after the drain", interval=2
        )
        assert max(r for _, r, _ in timeline) == PARTITIONS  # never above the cap
        print("t(s) replicas lag")
        for t, replicas, lag in timeline[:: max(1, len(timeline) // 25)]:
            print(f"{t:5.0f} {replicas:8d} {lag:8.0f}")

        # The adapter gone: the HPA cannot read the metric and says so in its conditions.
        down = run_monitoring("adapter-down")
        assert down.returncode == 0, down.stderr
        cond = await asyncio.to_thread(
            poll,
            lambda: (
                (c := hpa_condition(k8s, ns, child_name(spec.name, "Deployment"), "ScalingActive"))
                and c["status"] == "False"
                and c
            ),
            timeout=120,
            what="ScalingActive=False on the HPA",
        )
        assert cond["reason"] == "FailedGetPodsMetric", cond
        print(f"adapter down: ScalingActive False {cond['reason']}: {cond['message'][:160]}")
    finally:
        for rec in recorders.values():
            rec.ensure_stopped()
        run_monitoring("adapter-down")
