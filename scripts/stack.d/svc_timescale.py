"""Native TimescaleDB (Apache edition) for scripts/stack: PostgreSQL 17 + TimescaleDB 2.19 from
Debian trixie, run from the folder `scripts/timescaledb build` unpacked into the cache.

Owns the cluster's config and its `.stack/env` names (TSDB_APACHE_*); the runnable copy of the
folder comes from recorder/tools/demo_timescaledb.py, and the server process is managed like
svc_postgres's (the same pg_ctl calls, the same role and database).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import svc_postgres
from stacklib import ServiceState, StackError, free_port

from recorder.tools import (
    demo_timescaledb as native,  # shared with `datarecorder demo --db timescaledb`
)

NAME = "timescale"


def make_run_root(base: Path) -> Path:
    try:
        return native.make_run_root(base)
    except native.NotFetched as exc:
        raise StackError(str(exc)) from None


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
        *(f"{k} = '{v}'" for k, v in native.SERVER_SETTINGS.items()),
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
