"""Operator-mode and HPA-mode autoscaling on scripts/k8s, with lag read from the real Kafka.

Owns the checks that consumer-group lag in Kafka moves the recorder Deployment's replicas and
that the HPA child is accepted and worked on by the real controller-manager.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.fixtures.stack import Stack, TopicFactory
from tests.integration.k8s.manifests import create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

RECORDS = 200
HASH = "datarecorder.dev/config-hash"
PARTITIONS = 4


@pytest.fixture
def watched_ns(k8s: K8s, tmp_path: Path) -> Iterator[str]:
    name = f"as-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    create_tsdb_secret(k8s, name)
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


async def _commit_offsets(
    bootstrap: str, topic: str, partitions: int, group: str, *, offset: int
) -> None:
    """Commit `offset` on every partition for `group` (and never again)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp in tps})
    finally:
        await consumer.stop()


def _deployment_replicas(k8s: K8s, ns: str, name: str) -> int | None:
    """spec.replicas of the DataRecorder `name`'s Deployment (`<name>-recorder`), None while
    the operator has not created it yet."""
    proc = k8s.kubectl("get", "-n", ns, "deploy", f"{name}-recorder", "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return int(json.loads(proc.stdout)["spec"]["replicas"])


async def _lagging_recorder(
    k8s: K8s, stack: Stack, kafka_topics: TopicFactory, ns: str, name: str
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
    k8s: K8s, stack: Stack, kafka_topics: TopicFactory, watched_ns: str
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
    k8s: K8s, stack: Stack, kafka_topics: TopicFactory, watched_ns: str
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
        proc = k8s.kubectl(
            "get", "-n", watched_ns, "hpa", "hpa-recorder", "-o", "json", check=False
        )
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
        "name": "hpa-recorder",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    # The HPA controller of kube-controller-manager has looked at it; without an external
    # metrics API here it can only say that it cannot read the lag metric.
    conditions = {c["type"]: c for c in hpa["status"]["conditions"]}
    assert conditions["AbleToScale"]["status"] == "True"
    assert conditions["ScalingActive"]["status"] == "False"


def _operator_owns_replicas(deployment: dict[str, Any]) -> bool:
    for entry in deployment["metadata"].get("managedFields") or []:
        ours = entry["manager"] == "datarecorder-operator" and entry["operation"] == "Apply"
        if ours and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def test_hpa_mode_leaves_replicas_to_their_scaler_and_reports_the_metrics_api(
    k8s: K8s, watched_ns: str
) -> None:
    """Once something else has scaled the Deployment (the HPA; here `kubectl scale`, which
    writes the same scale subresource), the operator's applies leave `spec.replicas` out, so a
    forced apply can never take the field back and undo a scale. And the DataRecorder says
    whether the custom metrics API the HPA needs is served."""
    auto = {"enabled": True, "mode": "hpa", "minReplicas": 1, "maxReplicas": 4}
    k8s.apply(data_recorder("handoff", autoscaling=auto), watched_ns)
    wait_for(lambda: _deployment_replicas(k8s, watched_ns, "handoff") == 1, timeout=90, what="rec")
    deployment = k8s.get_json(
        "deploy", "handoff-recorder", "--show-managed-fields", namespace=watched_ns
    )
    assert _operator_owns_replicas(deployment)  # created at minReplicas by the operator

    served = k8s.kubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta1", check=False)
    want = "True" if served.returncode == 0 else "False"

    def metrics_condition() -> dict[str, Any] | None:
        dr = k8s.get_json("datarecorder", "handoff", namespace=watched_ns)
        for cond in (dr.get("status") or {}).get("conditions") or []:
            if cond["type"] == "CustomMetricsAvailable" and cond["status"] == want:
                return dict(cond)
        return None

    cond = wait_for(metrics_condition, timeout=60, what=f"CustomMetricsAvailable={want}")
    if want == "False":
        assert cond["reason"] == "APINotServed" and "custom.metrics.k8s.io" in cond["message"]

    def config_hash() -> str:
        deploy = k8s.get_json("deploy", "handoff-recorder", namespace=watched_ns)
        return str(deploy["spec"]["template"]["metadata"]["annotations"][HASH])

    before = config_hash()
    k8s.kubectl("scale", "deploy", "handoff-recorder", "-n", watched_ns, "--replicas=3")
    # A spec change makes the operator apply the Deployment again (new config hash).
    k8s.kubectl(
        "patch", "datarecorder", "handoff", "-n", watched_ns, "--type=merge",
        "-p", '{"spec": {"batching": {"batchSize": 500}}}',
    )  # fmt: skip

    def reapplied() -> bool:
        return config_hash() != before

    wait_for(reapplied, timeout=60, what="the changed spec applied")
    wait_for(
        lambda: (
            (d := k8s.get_json("deploy", "handoff-recorder", namespace=watched_ns))["metadata"][
                "generation"
            ]
            == d["status"].get("observedGeneration")
        ),
        timeout=60,
        what="the Deployment's rollout seen",
    )
    deployment = k8s.get_json(
        "deploy", "handoff-recorder", "--show-managed-fields", namespace=watched_ns
    )
    assert deployment["spec"]["replicas"] == 3
    assert not _operator_owns_replicas(deployment), deployment["metadata"]["managedFields"]


async def test_persistent_lag_is_left_out_of_scaling(
    k8s: K8s, stack: Stack, kafka_topics: TopicFactory, watched_ns: str
) -> None:
    """KEDA's excludePersistentLag on real Kafka: the group committed once and never again, so
    from the second poll on its lag asks for no replicas (the first poll scales up, having
    nothing to compare with); the status still shows the whole lag."""
    (topic,) = await kafka_topics("market.tick", partitions=PARTITIONS)
    await _produce(stack.kafka_bootstrap, topic, RECORDS)
    group = f"dr-{uuid.uuid4().hex[:8]}"
    await _commit_offsets(stack.kafka_bootstrap, topic, PARTITIONS, group, offset=5)
    k8s.apply(
        data_recorder(
            "stuck",
            kafka={"brokers": [stack.kafka_bootstrap], "topics": [topic], "groupId": group},
            autoscaling={
                "enabled": True,
                "mode": "operator",
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetLagPerReplica": 50,
                "pollIntervalSeconds": 1,
                "scaleDownStabilizationSeconds": 0,
                "excludePersistentLag": True,
            },
        ),
        watched_ns,
    )

    def scaled() -> list[str]:
        out = k8s.kubectl(
            "get", "events", "-n", watched_ns, "--field-selector=reason=Scaled", "-o", "json"
        ).stdout  # fmt: skip
        items = sorted(json.loads(out)["items"], key=lambda e: e["metadata"]["creationTimestamp"])
        return [e["message"] for e in items if e["involvedObject"]["name"] == "stuck"]

    def scaled_down() -> list[str] | None:
        m = scaled()
        return m if any("3 -> 1" in x for x in m) else None

    messages = wait_for(
        scaled_down,
        timeout=60,
        what="a scale up on the first poll, then down to 1 once the lag proved persistent",
    )
    assert "1 -> 3" in messages[0], messages
    assert _deployment_replicas(k8s, watched_ns, "stuck") == 1
    status = k8s.get_json("datarecorder", "stuck", namespace=watched_ns)["status"]
    assert status["lag"]["timescaledb"] == RECORDS - 5 * PARTITIONS
