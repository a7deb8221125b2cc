"""Fetch-from-follower (KIP-392) on a real two-rack cluster: a recorder in rack B reads its
partitions from the follower in rack B, not from the leader in rack A, and records every tick.

The cluster is the test's own: two KRaft brokers from the stack's Kafka jars (`rack-a` the
controller and every partition's leader, `rack-b` the follower), with Kafka's
RackAwareReplicaSelector. Broker B logs the requests it serves (kafka.request.logger); a
consumer's fetch there can only be a fetch from the follower. The same recorder without
KAFKA_CLIENT_RACK fetches nothing from B: the test fails without the setting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from recorder.devstack import kafka, procs
from recorder.devstack.recorder_proc import RecorderProcess
from tests.fixtures.stack import RecorderEnv
from tests.support import as_sent

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
CLIENT = "datarecorder-0"  # the recorder's consumer (recorder/kafka/source.py)
SELECTOR = "org.apache.kafka.common.replica.RackAwareReplicaSelector"
# Broker B's request log: every request it completes, one line each.
REQUEST_LOG = """
appender.req.type = File
appender.req.name = REQ
appender.req.fileName = {path}
appender.req.layout.type = PatternLayout
appender.req.layout.pattern = %m%n
logger.req.name = kafka.request.logger
logger.req.level = DEBUG
logger.req.additivity = false
logger.req.appenderRef.req.ref = REQ
"""


@dataclass
class TwoRacks:
    leader: str  # rack-a's bootstrap address
    requests: Path  # rack-b's request log

    def consumer_fetches_at_b(self, client_id: str) -> int:
        """Fetch requests (API key 1) of `client_id` that broker B served."""
        n = 0
        text = self.requests.read_text() if self.requests.exists() else ""
        for line in text.splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                header = json.loads(line[start:]).get("requestHeader", {})
            except ValueError:
                continue
            if header.get("requestApiKey") == 1 and header.get("clientId") == client_id:
                n += 1
        return n


def _node(d: Path, node: int, port: int, cport: int, rack: str) -> None:
    props = kafka.broker_properties(
        d / "data",
        port,
        cport,
        broker_rack=rack,
        replica_selector_class=SELECTOR,
        default_replication_factor="2",
        min_insync_replicas="1",
        broker_session_timeout_ms="3000",
        broker_heartbeat_interval_ms="500",
    )
    if node == 2:  # a broker only; rack-a is the cluster's controller
        props.update(
            {
                "process.roles": "broker",
                "node.id": "2",
                "listeners": f"PLAINTEXT://127.0.0.1:{port}",
            }
        )
    kafka.write_config(d, props)


@pytest.fixture(scope="module")
def two_racks_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRacks]:
    java, libs = kafka.java_binary(), kafka.jars(procs.log)
    root = tmp_path_factory.mktemp("racks")
    a, b = root / "a", root / "b"
    port_a, cport, port_b = procs.free_ports(3)
    _node(a, 1, port_a, cport, "rack-a")
    _node(b, 2, port_b, cport, "rack-b")
    requests = b / "requests.log"
    with (b / "log4j2.properties").open("a") as f:
        f.write(REQUEST_LOG.format(path=requests))
    cluster = kafka.cluster_id()
    kafka.format_storage(java, libs, a, cluster)
    kafka.format_storage(java, libs, b, cluster)
    children = [
        procs.spawn_child(name, kafka.broker_argv(java, libs, d, "384m"), d / "stdout.log", cwd=d)
        for name, d in (("rack-a", a), ("rack-b", b))
    ]
    try:
        yield TwoRacks(f"127.0.0.1:{port_a}", requests)
    finally:
        for child in children:
            child.stop(timeout=20)


@pytest.fixture
async def two_racks(two_racks_started: TwoRacks) -> AsyncIterator[TwoRacks]:
    """The cluster once both brokers are registered (waited on, not slept for)."""
    racks = two_racks_started

    async def both_brokers() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=racks.leader, request_timeout_ms=5000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            assert len(cluster["brokers"]) == 2, cluster
        finally:
            await admin.close()

    await procs.wait_ready("two racks", both_brokers, 120, lambda: True, [])
    yield racks


async def in_sync_topic(bootstrap: str, name: str) -> None:
    """A topic led by rack-a (node 1) on every partition, followed by rack-b (node 2), once
    both replicas are in sync."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assignment = {p: [1, 2] for p in range(PARTITIONS)}
        await admin.create_topics([NewTopic(name, -1, -1, replica_assignments=assignment)])

        async def in_sync() -> None:
            (described,) = await admin.describe_topics([name])
            isr = [sorted(p["isr"]) for p in described["partitions"]]
            leaders = [p["leader"] for p in described["partitions"]]
            assert isr == [[1, 2]] * PARTITIONS and leaders == [1] * PARTITIONS, described

        await procs.wait_ready(f"topic {name} in sync", in_sync, 60, lambda: True, [])
    finally:
        await admin.close()


async def record(
    env: dict[str, str], ticks: list[as_sent.Sent], tick: str, tmp: Path, name: str
) -> None:
    rec = RecorderProcess(env=env, log_path=tmp / f"{name}.log")
    rec.start(wait_ready=90)
    try:
        await as_sent.wait_stored(
            env, {"db.tick": as_sent.expected(ticks, tick, micros=True)}, [rec], 120
        )
    finally:
        rec.terminate(30)


async def fetches_at_b_while_recording(
    racks: TwoRacks, env_of: RecorderEnv, rack: str, database: str, bucket: str, name: str,
    tmp: Path,
) -> int:  # fmt: skip
    """Records a new topic's ticks with KAFKA_CLIENT_RACK=`rack` (every field compared in the
    database); the fetches broker B served the recorder meanwhile."""
    tick, book = f"market.tick.rack{name}", f"market.orderbook.rack{name}"
    await in_sync_topic(racks.leader, tick)
    ticks = as_sent.corpus((tick, book), PARTITIONS, ticks=2_000, books=0, seed=11)
    await as_sent.send(racks.leader, ticks)
    env = env_of(
        database=database,
        bucket=bucket,
        topics=[tick],
        KAFKA_BROKERS=racks.leader,
        KAFKA_CLIENT_RACK=rack,
        S3_WRITE_ENABLED="false",
    )
    before = racks.consumer_fetches_at_b(CLIENT)
    await record(env, ticks, tick, tmp, name)
    return racks.consumer_fetches_at_b(CLIENT) - before


async def test_a_recorder_in_rack_b_fetches_from_the_follower_in_rack_b(
    two_racks: TwoRacks,
    recorder_env: RecorderEnv,
    fresh_database: str,
    fresh_bucket: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    fetched = await fetches_at_b_while_recording(
        two_racks, recorder_env, "rack-b", fresh_database, fresh_bucket, unique_name, tmp_path
    )
    assert fetched > 0


async def test_a_recorder_without_a_rack_fetches_from_the_leader(
    two_racks: TwoRacks,
    recorder_env: RecorderEnv,
    fresh_database: str,
    fresh_bucket: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    fetched = await fetches_at_b_while_recording(
        two_racks, recorder_env, "", fresh_database, fresh_bucket, unique_name, tmp_path
    )
    assert fetched == 0
