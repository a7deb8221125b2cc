"""Apache Kafka for scripts/stack: one KRaft node (broker + controller) run with the machine's JDK.

Owns the jar cache (resolved by Maven from kafka-pom.xml), the broker's config, storage and process.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from stacklib import (
    CACHE,
    JAVA_HINT,
    ServiceState,
    StackError,
    free_port,
    log,
    spawn,
    terminate,
    wait_ready,
)

NAME = "kafka"
VERSION = os.environ.get("DATARECORDER_KAFKA_VERSION", "4.4.0")
POM = Path(__file__).resolve().parent / "kafka-pom.xml"
HEAP = os.environ.get("DATARECORDER_KAFKA_HEAP", "512m")
READY_TIMEOUT = float(os.environ.get("DATARECORDER_KAFKA_TIMEOUT", "120"))

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {logfile}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = org.apache.kafka
logger.kafka.level = INFO
"""


def java_binary() -> str:
    """The JDK to run the broker with: $JAVA_HOME/bin/java, else `java` on PATH; 17+ required."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise StackError(f"java not found; install a JDK 17+ (`{JAVA_HINT}`)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 17:
        raise StackError(f"{java} is Java {major}; Kafka 4 needs 17+ (`{JAVA_HINT}`)")
    return java


def jars() -> Path:
    """The broker's classpath dir in the cache, resolved by Maven on first use and reused after."""
    libs = CACHE / f"kafka-{VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(f"mvn (Maven) not found; it resolves Kafka's jars (`{JAVA_HINT}`)")
    partial = libs.with_name("libs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"resolving Apache Kafka {VERSION} jars with Maven into {libs}")
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-Dkafka.version={VERSION}",
        f"-DoutputDirectory={partial}",
        # Keep Maven's own repository in our cache too, so the cache dir is all there is.
        f"-Dmaven.repo.local={CACHE / 'm2'}",
    ]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"Maven could not resolve Kafka {VERSION}:\n{res.stdout}\n{res.stderr}")
    (partial / ".complete").write_text(VERSION)
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    return libs


def cluster_id() -> str:
    """A random KRaft cluster id in Kafka's format (url-safe base64 of 16 bytes, no padding)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid avoids these: they look like flags
            return cid


def configure(st: ServiceState) -> None:
    """First `up`: choose ports, write the broker config and format its storage."""
    port, cport = free_port(), free_port()
    while cport == port:
        cport = free_port()
    d = st.dir
    data = d / "data"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{cport}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "6",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Tests create their topics through the admin API; auto-creation stays on so that
        # ad-hoc tools (and the recorder's dead-letter topics) work without a setup step.
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        # After a killed broker (fault tests) the restarted node must wait out its old
        # registration's session; a short one brings it back in seconds instead of ~15 s.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "message.max.bytes": str(8 * 1024 * 1024),
    }
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (d / "log4j2.properties").write_text(LOG4J2.format(logfile=d / "server.log"))
    java, libs = java_binary(), jars()
    res = subprocess.run(
        [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id(),
            "-c",
            str(d / "server.properties"),
        ],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise StackError(f"kafka storage format failed:\n{res.stdout}\n{res.stderr}")
    st.data.update(configured=True, port=port, controller_port=cport, version=VERSION)
    st.save()


def running(st: ServiceState) -> bool:
    return st.pid("pid", "kafka.Kafka") is not None


def start(st: ServiceState) -> None:
    """Launch the broker on its recorded ports and data (returns at once; see `ready`)."""
    if running(st):
        return
    if not st.configured:
        configure(st)
    d = st.dir
    java, libs = java_binary(), jars()
    argv = [
        java,
        f"-Xmx{HEAP}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={d}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(d / "server.properties"),
    ]
    st.data["pid"] = spawn(argv, d / "stdout.log", cwd=d)
    st.save()


async def ready(st: ServiceState) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    bootstrap = address(st)

    async def probe() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            await admin.describe_cluster()
            # Finding a group's coordinator creates __consumer_offsets; doing it here spares
            # the first consumer group of a test run the wait (and its error logs).
            await admin.list_consumer_group_offsets("datarecorder-stack-warmup")
        finally:
            await admin.close()

    await wait_ready(
        f"kafka at {bootstrap}",
        probe,
        READY_TIMEOUT,
        lambda: running(st),
        st.dir / "server.log",
    )


def stop(st: ServiceState, kill: bool = False) -> None:
    terminate(st.pid("pid", "kafka.Kafka"), timeout=30, kill=kill)
    st.data.pop("pid", None)
    st.save()


def address(st: ServiceState) -> str:
    return f"127.0.0.1:{st.int('port')}"


def env(st: ServiceState) -> dict[str, str]:
    return {"KAFKA_BROKERS": address(st)}


def describe(st: ServiceState) -> str:
    return f"{address(st)} (Apache Kafka {st.data.get('version')}, KRaft, logs {st.dir / 'server.log'})"


def remove(st: ServiceState) -> None:
    stop(st, kill=True)  # its data goes too: no need for a clean shutdown
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(st.dir)
