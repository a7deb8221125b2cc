"""`scripts/stack`'s Kafka: the broker of recorder/devstack/kafka.py, detached, on kept ports.

Owns the test profile of the broker's properties (six partitions, fast restarts after a kill)
and the broker's pid and ports in `.stack/kafka/state.json`.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from recorder.devstack import kafka, procs
from recorder.devstack.stack.state import ServiceState

NAME = "kafka"
HEAP = os.environ.get("DATARECORDER_KAFKA_HEAP", "512m")
READY_TIMEOUT = float(os.environ.get("DATARECORDER_KAFKA_TIMEOUT", "120"))
# The tests' broker: as many partitions as the tests' topics, and room for large records.
TEST_PROFILE = {
    "num_partitions": "6",
    "offsets_topic_num_partitions": "6",
    "transaction_state_log_num_partitions": "6",
    "default_replication_factor": "1",
    "min_insync_replicas": "1",
    "delete_topic_enable": "true",
    # After a killed broker (fault tests) the restarted node must wait out its old
    # registration's session; a short one brings it back in seconds instead of ~15 s.
    "broker_session_timeout_ms": "3000",
    "broker_heartbeat_interval_ms": "500",
    "num_io_threads": "4",
    "num_recovery_threads_per_data_dir": "1",
    "log_retention_hours": "24",
    "message_max_bytes": str(8 * 1024 * 1024),
}


def configure(st: ServiceState) -> None:
    """First `up`: choose ports, write the broker config and format its storage."""
    port, cport = procs.free_ports(2)
    props = kafka.broker_properties(st.dir / "data", port, cport, **TEST_PROFILE)
    kafka.write_config(st.dir, props)
    kafka.format_storage(kafka.java_binary(), kafka.jars(procs.log), st.dir)
    st.data.update(configured=True, port=port, controller_port=cport, version=kafka.VERSION)
    st.save()


def running(st: ServiceState) -> bool:
    return st.pid("pid", kafka.MARKER) is not None


def start(st: ServiceState) -> None:
    """Launch the broker on its recorded ports and data (returns at once; see `ready`)."""
    if running(st):
        return
    if not st.configured:
        configure(st)
    argv = kafka.broker_argv(kafka.java_binary(), kafka.jars(procs.log), st.dir, HEAP)
    st.data["pid"] = procs.spawn(argv, st.dir / "stdout.log", cwd=st.dir).pid
    st.save()


async def ready(st: ServiceState) -> None:
    bootstrap = address(st)
    await procs.wait_ready(
        f"kafka at {bootstrap}",
        lambda: kafka.probe(bootstrap),
        READY_TIMEOUT,
        lambda: running(st),
        # The JVM's own errors (bad flags, no memory) go to stdout.log, the broker's to server.log.
        [st.dir / "stdout.log", st.dir / "server.log"],
        pid=st.recorded_pid("pid"),
    )


def stop(st: ServiceState, kill: bool = False) -> None:
    procs.terminate(st.pid("pid", kafka.MARKER), timeout=30, kill=kill)
    st.data.pop("pid", None)
    st.save()


def address(st: ServiceState) -> str:
    return f"127.0.0.1:{st.get_int('port')}"


def env(st: ServiceState) -> dict[str, str]:
    return {"KAFKA_BROKERS": address(st)}


def describe(st: ServiceState) -> str:
    version = st.data.get("version")
    return f"{address(st)} (Apache Kafka {version}, KRaft, logs {st.dir / 'server.log'})"


def remove(st: ServiceState) -> None:
    stop(st, kill=True)  # its data goes too: no need for a clean shutdown
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(st.dir)
