"""`scripts/stack`'s PostgreSQL: a throwaway cluster of the machine's server on a kept port.

Owns the cluster's life in the stack — initdb into a private temp dir (the socket path must
stay short), pg_ctl start/stop, the recorder's role and database — for this service and for
the native TimescaleDB one (timescale.py), which differ only in their binaries and settings.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from recorder.devstack import postgres, procs
from recorder.devstack.procs import ServiceError
from recorder.devstack.stack.state import ServiceState

NAME = "postgres"
USER = "recorder"
PASSWORD = "recorder"
DATABASE = "marketdata"
READY_TIMEOUT = float(os.environ.get("DATARECORDER_PG_TIMEOUT", "60"))
MAX_CONNECTIONS = 200  # parallel test workers, each with recorders and pools of their own
PG_CTL_TIMEOUT_S = 60


def private_base(prefix: str) -> Path:
    """A temp dir the server user owns (as root: under /tmp, which it can traverse)."""
    user = postgres.run_user()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if user else None))
    if user:
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    return base


def configure_cluster(
    st: ServiceState, bins: Path, base: Path, extra: Mapping[str, str], timescaledb: bool
) -> None:
    """initdb `base/data` with `bins`, append our settings, record it all in `st`."""
    data = base / "data"
    postgres.initdb(bins, data, "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
    port = procs.free_port()
    settings = postgres.server_settings(port, str(base), MAX_CONNECTIONS, extra)
    with open(data / "postgresql.conf", "a") as f:
        f.write("\n# scripts/stack\n" + postgres.conf_lines(settings))
    st.data.update(
        configured=True,
        port=port,
        base=str(base),
        bindir=str(bins),
        timescaledb=timescaledb,
        bootstrapped=False,
    )
    st.save()


def configure(st: ServiceState) -> None:
    bins, _ = postgres.bindir()
    base = private_base("datarecorder-pg-")
    os.chmod(base, 0o700)
    timescale = postgres.has_timescaledb(bins)
    extra = (
        {"shared_preload_libraries": "timescaledb", "timescaledb.telemetry_level": "off"}
        if timescale
        else {}
    )
    configure_cluster(st, bins, base, extra, timescale)


def _paths(st: ServiceState) -> tuple[Path, Path, Path]:
    base = Path(st.get_str("base"))
    return Path(st.get_str("bindir")), base / "data", base / "postgres.log"


def server_pid(st: ServiceState) -> int | None:
    if not st.configured:
        return None
    _, data, _ = _paths(st)
    try:
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def running(st: ServiceState) -> bool:
    pid = server_pid(st)
    return pid is not None and procs.pid_alive(pid) and postgres.MARKER in procs.cmdline(pid)


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    start_cluster(st)


def start_cluster(st: ServiceState) -> None:
    if running(st):
        return
    bins, data, logfile = _paths(st)
    pg_ctl = [str(bins / "pg_ctl"), "-D", str(data), "-l", str(logfile)]
    res = postgres.as_server_user(
        [*pg_ctl, "-w", "-t", str(PG_CTL_TIMEOUT_S), "start"], check=False, new_session=True
    )
    if res.returncode != 0:
        said = (res.stdout + res.stderr).strip().splitlines()
        event = f"did not start (pg_ctl: {procs.describe_exit(res.returncode)}"
        event += f", {said[-1].strip()})" if said else ")"
        raise ServiceError(procs.why_failed(f"{st.name} at {address(st)}", event, [logfile]))
    if not st.data.get("bootstrapped"):
        bootstrap(st)


def bootstrap(st: ServiceState) -> None:
    """Create the recorder's role and database (superuser: it may CREATE EXTENSION, DATABASE)."""
    bins, _, _ = _paths(st)
    psql = [
        str(bins / "psql"),
        "-h",
        st.get_str("base"),
        "-p",
        str(st.get_int("port")),
        "-U",
        "postgres",
    ]
    sql = (
        f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}';\n"
        f"CREATE DATABASE {DATABASE} OWNER {USER};\n"
    )
    res = subprocess.run(
        [*psql, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"],
        input=sql,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise ServiceError(f"creating role/database failed:\n{res.stdout}{res.stderr}")
    st.data["bootstrapped"] = True
    st.save()


async def ready(st: ServiceState) -> None:
    port = st.get_int("port")
    await procs.wait_ready(
        f"{st.name} at 127.0.0.1:{port}",
        lambda: postgres.probe("127.0.0.1", port, USER, PASSWORD, DATABASE),
        READY_TIMEOUT,
        lambda: running(st),
        _paths(st)[2],
    )  # the postmaster is pg_ctl's child, not ours: its log says why it ended


def stop(st: ServiceState, kill: bool = False) -> None:
    if not running(st):
        return
    bins, data, _ = _paths(st)
    # immediate = like a crash (recovery on restart); fast = clean shutdown, connections cut.
    mode = "immediate" if kill else "fast"
    pg_ctl = [str(bins / "pg_ctl"), "-D", str(data), "-m", mode]
    postgres.as_server_user([*pg_ctl, "-w", "-t", str(PG_CTL_TIMEOUT_S), "stop"])


def address(st: ServiceState) -> str:
    return f"127.0.0.1:{st.get_int('port')}"


def db_env(prefix: str, st: ServiceState) -> dict[str, str]:
    """The connection variables of this cluster under `prefix` (TIMESCALEDB_, TSDB_APACHE_)."""
    values = {"HOST": "127.0.0.1", "PORT": str(st.get_int("port")), "USER": USER}
    values.update(PASSWORD=PASSWORD, DB=DATABASE)
    return {prefix + k: v for k, v in values.items()}


def env(st: ServiceState) -> dict[str, str]:
    return db_env("TIMESCALEDB_", st)


def logfile(st: ServiceState) -> Path:
    return _paths(st)[2]


def describe(st: ServiceState) -> str:
    mode = "TimescaleDB preloaded" if st.data.get("timescaledb") else "plain PostgreSQL mode"
    version = Path(st.get_str("bindir")).parent.name
    return f"{address(st)} (PostgreSQL {version}, {mode}, db {DATABASE}, logs {logfile(st)})"


def remove_cluster(st: ServiceState, prefix: str) -> None:
    if st.configured:
        stop(st, kill=True)
        base = st.data.get("base")
        if isinstance(base, str) and Path(base).name.startswith(prefix):
            shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(st.dir, ignore_errors=True)


def remove(st: ServiceState) -> None:
    remove_cluster(st, "datarecorder-pg-")
