"""`scripts/stack`'s native TimescaleDB (Apache edition): PostgreSQL 17 + TimescaleDB 2.19 from
Debian trixie, from the folder `scripts/timescaledb build` unpacked into the cache.

Owns only what differs from postgres.py: the binaries (a runnable copy made by
recorder/devstack/timescaledb.py), the preloaded extension and the TSDB_APACHE_* names.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from recorder.devstack import postgres, timescaledb
from recorder.devstack.stack import postgres as cluster
from recorder.devstack.stack.state import ServiceState

NAME = "timescale"
PREFIX = "datarecorder-ts-"


def configure(st: ServiceState) -> None:
    user = postgres.run_user()
    base = cluster.private_base(PREFIX)
    os.chmod(base, 0o755)  # the server user reads the run root through it
    bins = timescaledb.make_run_root(base)
    data = base / "data"
    data.mkdir(mode=0o700)
    if user:
        pw = pwd.getpwnam(user)
        os.chown(data, pw.pw_uid, pw.pw_gid)
    cluster.configure_cluster(st, bins, base, timescaledb.SERVER_SETTINGS, True)


# The server process: exactly postgres.py's, given this state's bindir, base and port.
running = cluster.running
ready = cluster.ready
stop = cluster.stop
address = cluster.address


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    cluster.start_cluster(st)


def env(st: ServiceState) -> dict[str, str]:
    return cluster.db_env("TSDB_APACHE_", st)


def describe(st: ServiceState) -> str:
    logfile = Path(st.get_str("base")) / "postgres.log"
    return (
        f"{address(st)} (PostgreSQL 17 + TimescaleDB 2.19 Apache edition, Debian trixie, "
        f"db {cluster.DATABASE}, logs {logfile})"
    )


def remove(st: ServiceState) -> None:
    cluster.remove_cluster(st, PREFIX)
