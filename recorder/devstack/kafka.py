"""Apache Kafka as a dev service: one KRaft node (broker + controller) on the machine's JDK.

Owns the jar cache (resolved once by Maven from kafka-pom.xml), the broker's properties (pure),
formatting its storage, its command line and the readiness probe. Who keeps the process
(`scripts/stack` detached, the demo as its child) is the caller's business.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from recorder.devstack import maven
from recorder.devstack.procs import CACHE, JAVA_HINT, ServiceError

VERSION = os.environ.get("DATARECORDER_KAFKA_VERSION", "4.4.0")
POM = Path(__file__).resolve().parent / "kafka-pom.xml"
JARS = CACHE / f"kafka-{VERSION}" / "libs"
# Finding a group's coordinator creates __consumer_offsets; the probe does it so that the first
# consumer group (a test's, the demo's recorder) does not wait for it and log retries.
WARMUP_GROUP = "datarecorder-warmup"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {logfile}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""


def java_binary() -> str:
    """The JDK to run the broker with: $JAVA_HOME/bin/java, else `java` on PATH; 17+ required."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceError(f"Apache Kafka needs Java 17+; java not found (`{JAVA_HINT}`)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    return check_java_version(java, out)


def check_java_version(java: str, version_output: str) -> str:
    """Pure: `java` if its `-version` output says 17 or newer ("1.8.0" style read as 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < 17:
        raise ServiceError(f"{java} is Java {major}; Apache Kafka 4 needs 17+ (`{JAVA_HINT}`)")
    return java


def jars(say: Callable[[str], None]) -> Path:
    """The broker's classpath directory in the cache, resolved by Maven on first use only."""
    if not maven.complete(JARS):
        say(f"resolving Apache Kafka {VERSION} jars with Maven (once) into {JARS}")
    return maven.copy_dependencies(POM, JARS, {"kafka.version": VERSION}, "Apache Kafka", VERSION)


def cluster_id() -> str:
    """A random KRaft cluster id in Kafka's format (url-safe base64 of 16 bytes, no padding)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid avoids these: they look like flags
            return cid


def broker_properties(
    data: Path, port: int, controller_port: int, **overrides: str
) -> dict[str, str]:
    """Pure: a single-node KRaft broker on loopback with one replica of everything.

    `overrides` (dots written as underscores: `num_partitions="6"`) tune it per user."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "4",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # One member joins: no reason to wait for others before the first assignment.
        "group.initial.rebalance.delay.ms": "0",
        # Tools (and the recorder's dead-letter topics) work without a setup step.
        "auto.create.topics.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    props.update({k.replace("_", "."): v for k, v in overrides.items()})
    return props


def write_config(d: Path, props: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (d / "log4j2.properties").write_text(LOG4J2.format(logfile=d / "server.log"))


def _jvm(java: str, libs: Path, d: Path, *flags: str) -> list[str]:
    log4j = f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}"
    return [java, *flags, log4j, "-cp", f"{libs}/*"]


def format_storage(java: str, libs: Path, d: Path, cluster: str | None = None) -> None:
    """Format the KRaft storage of the config in `d` (once, before the first start); the nodes
    of one cluster share `cluster` (None: a new cluster's id)."""
    argv = _jvm(java, libs, d, "-Xmx256m", "-XX:TieredStopAtLevel=1")  # short-lived: no C2 JIT
    argv += ["kafka.tools.StorageTool", "format", "-t", cluster or cluster_id()]
    argv += ["-c", str(d / "server.properties")]
    res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise ServiceError(f"formatting Kafka storage failed:\n{res.stdout}{res.stderr}")


def broker_argv(java: str, libs: Path, d: Path, heap: str = "512m") -> list[str]:
    flags = (
        f"-Xmx{heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={d}",
    )
    return [*_jvm(java, libs, d, *flags), "kafka.Kafka", str(d / "server.properties")]


MARKER = "kafka.Kafka"  # how a broker process is recognised in /proc/<pid>/cmdline


async def probe(bootstrap: str) -> None:
    """Succeeds once the broker answers metadata and group-coordinator requests."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.describe_cluster()
        await admin.list_consumer_group_offsets(WARMUP_GROUP)
    finally:
        await admin.close()
