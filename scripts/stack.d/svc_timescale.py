"""Native TimescaleDB (Apache edition) for scripts/stack: PostgreSQL 17 + TimescaleDB 2.19 from
Debian trixie, run from the folder `scripts/timescaledb build` unpacked into the cache.

Owns the run copy of that folder (with wrappers that start each binary through the folder's own
loader), the cluster's config and its `.stack/env` names (TSDB_APACHE_*); the server process is
managed like svc_postgres's (the same pg_ctl calls, the same role and database).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import svc_postgres
from stacklib import ServiceState, StackError, free_port

NAME = "timescale"
SCRIPT = Path(__file__).resolve().parents[1] / "timescaledb"
# The binaries a cluster needs; each gets a wrapper (initdb and pg_ctl exec `postgres` by path).
WRAPPED = ("postgres", "initdb", "pg_ctl", "psql", "pg_isready")
PG_DIR = Path("usr/lib/postgresql/17")
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")


def cached_root() -> Path:
    """The unpacked trixie root in the cache (fetched once by scripts/bootstrap)."""
    res = subprocess.run(["bash", str(SCRIPT), "root"], capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(
            f"native TimescaleDB is not fetched yet: run `scripts/timescaledb build` "
            f"(scripts/bootstrap does): {res.stderr.strip()}"
        )
    return Path(res.stdout.strip())


def wrapper(root: Path, real: Path) -> str:
    """A shell script that runs `real` through the root's loader and libraries.

    --argv0 keeps the wrapper's path as argv[0]: PostgreSQL finds its share and lib folders
    relative to it, and initdb/pg_ctl then exec the wrapped `postgres` beside it."""
    libs = ":".join(str(root / d) for d in LIB_DIRS)
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    return f'#!/bin/sh\nexec {loader} --library-path {libs} --argv0 "$0" {real} "$@"\n'


def make_run_root(base: Path) -> Path:
    """A copy of the cached root the server user can reach (the cache may sit under a private
    home), hard-linked when possible (instant), with the wrapped binaries."""
    source = cached_root()
    root = base / "root"
    res = subprocess.run(["cp", "-al", str(source), str(root)], capture_output=True, text=True)
    if res.returncode != 0:  # another filesystem: a real copy (~160 MB, a second or two)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source, root, symlinks=True)
    bins = root / PG_DIR / "bin"
    real_dir = bins / ".real"
    real_dir.mkdir()
    for name in WRAPPED:
        real = real_dir / name
        (bins / name).rename(real)
        (bins / name).write_text(wrapper(root, real))
        (bins / name).chmod(0o755)
    return bins


def configure(st: ServiceState) -> None:
    user = svc_postgres.run_user()
    base = Path(tempfile.mkdtemp(prefix="datarecorder-ts-", dir="/tmp" if user else None))
    os.chmod(base, 0o755)  # the server user reads the run root through it
    bins = make_run_root(base)
    data = base / "data"
    data.mkdir(mode=0o700)
    if user:
        pw = pwd.getpwnam(user)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    svc_postgres.as_server_user(
        [
            str(bins / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]
    )
    port = free_port()
    conf = [
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"unix_socket_directories = '{base}'",
        "max_connections = 200",
        "shared_buffers = 128MB",
        "fsync = off",
        "synchronous_commit = off",
        "full_page_writes = off",
        "timezone = 'UTC'",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] %q%u@%d '",
        # libLLVM is not unpacked (130 MB for a feature short test queries never use).
        "jit = off",
        "shared_preload_libraries = 'timescaledb'",
        "timescaledb.telemetry_level = off",
    ]
    with open(data / "postgresql.conf", "a") as f:
        f.write("\n# scripts/stack (native TimescaleDB)\n" + "\n".join(conf) + "\n")
    st.data.update(
        configured=True,
        port=port,
        base=str(base),
        bindir=str(bins),
        timescaledb=True,
        bootstrapped=False,
    )
    st.save()


# The server process: exactly svc_postgres's, given this state's bindir, base and port.
server_pid = svc_postgres.server_pid
running = svc_postgres.running
ready = svc_postgres.ready
stop = svc_postgres.stop
address = svc_postgres.address


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    svc_postgres.start(st)


def env(st: ServiceState) -> dict[str, str]:
    return {
        "TSDB_APACHE_HOST": "127.0.0.1",
        "TSDB_APACHE_PORT": str(st.int("port")),
        "TSDB_APACHE_USER": svc_postgres.USER,
        "TSDB_APACHE_PASSWORD": svc_postgres.PASSWORD,
        "TSDB_APACHE_DB": svc_postgres.DATABASE,
    }


def describe(st: ServiceState) -> str:
    logfile = Path(st.str("base")) / "postgres.log"
    return (
        f"{address(st)} (PostgreSQL 17 + TimescaleDB 2.19 Apache edition, Debian trixie, "
        f"db {svc_postgres.DATABASE}, logs {logfile})"
    )


def remove(st: ServiceState) -> None:
    if st.configured:
        stop(st, kill=True)
        base = st.data.get("base")
        if isinstance(base, str) and Path(base).name.startswith("datarecorder-ts-"):
            shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(st.dir, ignore_errors=True)
