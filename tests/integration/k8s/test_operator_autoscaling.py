"""Operator-mode and HPA-mode autoscaling on scripts/k8s, with lag read from the real Kafka.

Owns the checks that consumer-group lag in Kafka moves the recorder Deployment's replicas and
that the HPA child is accepted and worked on by the real controller-manager.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

RECORDS = 200
PARTITIONS = 4


@pytest.fixture
def watched_ns(k8s: K8s, tmp_path: Any) -> Iterator[str]:
    name = f"as-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    k8s.kubectl("create", "secret", "generic", "tsdb", "-n", name, "--from-literal=password=pw")
    op = Operator(k8s, name, tmp_path / "operator.log")
    try:
        op.wait_alive()
        yield name
    finally:
        op.stop()
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
        op.assert_no_traceback_while_running()


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, key=str(i).encode(), value=b"{}")
        await producer.flush()
    finally:
        await producer.stop()


async def _commit_end_offsets(bootstrap: str, topic: str, partitions: int, group: str) -> None:
    """Commit the log end of every partition for `group`: its lag drops to zero."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


def _deployment_replicas(k8s: K8s, ns: str, name: str) -> int | None:
    """spec.replicas of the Deployment, None while the operator has not created it yet."""
    proc = k8s.kubectl("get", "-n", ns, "deploy", name, "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return int(json.loads(proc.stdout)["spec"]["replicas"])


async def _lagging_recorder(
    k8s: K8s, stack: Any, kafka_topics: Any, ns: str, name: str
) -> tuple[str, str]:
    """A DataRecorder in operator mode over a fresh 4-partition topic holding RECORDS records."""
    (topic,) = await kafka_topics("market.tick", partitions=PARTITIONS)
    await _produce(stack.kafka_bootstrap, topic, RECORDS)
    group = f"dr-{uuid.uuid4().hex[:8]}"
    k8s.apply(
        data_recorder(
            name,
            kafka={"brokers": [stack.kafka_bootstrap], "topics": [topic], "groupId": group},
            autoscaling={
                "enabled": True,
                "mode": "operator",
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetLagPerReplica": 50,
                "pollIntervalSeconds": 1,
                "scaleDownStabilizationSeconds": 0,
            },
        ),
        ns,
    )
    # No committed offsets and offsetResetPolicy earliest: the whole log (200) is lag, which
    # asks for ceil(200 / 50) = 4 replicas, clamped to maxReplicas 3.
    wait_for(
        lambda: _deployment_replicas(k8s, ns, name) == 3,
        timeout=90,
        what=f"the operator to scale Deployment {name} to 3 on a lag of {RECORDS}",
    )
    return topic, group


async def test_operator_mode_scales_on_kafka_lag(
    k8s: K8s, stack: Any, kafka_topics: Any, watched_ns: str
) -> None:
    topic, group = await _lagging_recorder(k8s, stack, kafka_topics, watched_ns, "auto")

    def lag_in_status() -> dict[str, Any] | None:
        status = k8s.get_json("datarecorder", "auto", namespace=watched_ns).get("status") or {}
        ok = (status.get("lag") or {}).get("timescaledb") == RECORDS
        return status if ok and status.get("readyReplicas") == 3 else None

    status = wait_for(lag_in_status, timeout=60, what="status.lag and 3 ready replicas")
    assert status["partitions"] == PARTITIONS and status["desiredReplicas"] == 3
    row = k8s.kubectl(
        "get", "-n", watched_ns, "datarecorder", "auto", "--no-headers"
    ).stdout.split()
    assert row[2:4] == ["3", str(RECORDS)]  # REPLICAS and LAG printer columns

    await _commit_end_offsets(stack.kafka_bootstrap, topic, PARTITIONS, group)
    wait_for(
        lambda: _deployment_replicas(k8s, watched_ns, "auto") == 1,
        timeout=90,
        what="the operator to scale Deployment auto back to minReplicas after the lag cleared",
    )


async def test_operator_mode_scaling_posts_an_event(
    k8s: K8s, stack: Any, kafka_topics: Any, watched_ns: str
) -> None:
    await _lagging_recorder(k8s, stack, kafka_topics, watched_ns, "evented")

    def scaled_events() -> list[Any]:
        out = k8s.kubectl(
            "get", "events", "-n", watched_ns, "--field-selector=reason=Scaled", "-o", "json"
        ).stdout  # fmt: skip
        items: list[Any] = json.loads(out)["items"]
        return items

    # Events are posted asynchronously by kopf: give the poster a few seconds.
    wait_for(scaled_events, timeout=5, what="a Scaled event on the DataRecorder")


def test_hpa_mode_creates_an_hpa_the_controller_works_on(k8s: K8s, watched_ns: str) -> None:
    k8s.apply(
        data_recorder(
            "hpa",
            autoscaling={"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 4},
        ),
        watched_ns,
    )

    def hpa_seen() -> dict[str, Any] | None:
        proc = k8s.kubectl("get", "-n", watched_ns, "hpa", "hpa", "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        hpa: dict[str, Any] = json.loads(proc.stdout)
        return hpa if (hpa.get("status") or {}).get("conditions") else None

    hpa = wait_for(hpa_seen, timeout=90, what="the HPA to exist and be looked at by its controller")
    owner = hpa["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("DataRecorder", "hpa")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "hpa",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    # The HPA controller of kube-controller-manager has looked at it; without an external
    # metrics API here it can only say that it cannot read the lag metric.
    conditions = {c["type"]: c for c in hpa["status"]["conditions"]}
    assert conditions["AbleToScale"]["status"] == "True"
    assert conditions["ScalingActive"]["status"] == "False"
