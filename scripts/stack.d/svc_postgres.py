"""PostgreSQL for scripts/stack: a throwaway cluster of the machine's server on a loopback port.

Owns initdb, the server's config (TimescaleDB preloaded when installed), the recorder's role and
database, and the server process (run as an unprivileged user when invoked as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from stacklib import (
    PG_HINT,
    ServiceState,
    StackError,
    cmdline,
    free_port,
    pid_alive,
    tail,
    wait_ready,
)

NAME = "postgres"
USER = "recorder"
PASSWORD = "recorder"
DATABASE = "marketdata"
READY_TIMEOUT = float(os.environ.get("DATARECORDER_PG_TIMEOUT", "60"))


def bindir() -> Path:
    """The newest server under /usr/lib/postgresql (Debian layout), else pg_config's bindir."""
    override = os.environ.get("DATARECORDER_PG_BINDIR")
    if override:
        return Path(override)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout
        if (Path(out.strip()) / "initdb").exists():
            return Path(out.strip())
    raise StackError(f"PostgreSQL server (initdb) not found; install it (`{PG_HINT}`)")


def has_timescaledb(bins: Path) -> bool:
    res = subprocess.run([str(bins / "pg_config"), "--sharedir"], capture_output=True, text=True)
    share = Path(res.stdout.strip()) if res.returncode == 0 else None
    return bool(share and (share / "extension" / "timescaledb.control").exists())


def run_user() -> str | None:
    """initdb and postgres refuse to run as root: use `postgres` (or `nobody`) then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise StackError("running as root but neither user `postgres` nor `nobody` exists")


def as_server_user(
    argv: list[str], *, check: bool = True, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    user = run_user()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if user:
        env["HOME"] = pwd.getpwnam(user).pw_dir
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        user=user,
        env=env,
        cwd="/",
        # A new session keeps the postmaster out of the caller's process group (Ctrl-C in a
        # terminal running pytest must not shut the database down behind the test's back).
        start_new_session=new_session,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def configure(st: ServiceState) -> None:
    """First `up`: initdb into a private temp dir (the socket path must stay short), config."""
    bins = bindir()
    user = run_user()
    # As root the server user must reach the dir: /tmp, not a $TMPDIR it may not traverse.
    base = Path(tempfile.mkdtemp(prefix="datarecorder-pg-", dir="/tmp" if user else None))
    if user:
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    os.chmod(base, 0o700)
    data = base / "data"
    as_server_user(
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
    timescale = has_timescaledb(bins)
    conf = [
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"unix_socket_directories = '{base}'",
        "max_connections = 200",
        "shared_buffers = 128MB",
        # A throwaway test cluster: durability against power loss is not worth the I/O.
        "fsync = off",
        "synchronous_commit = off",
        "full_page_writes = off",
        "timezone = 'UTC'",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] %q%u@%d '",
    ]
    if timescale:
        conf += ["shared_preload_libraries = 'timescaledb'", "timescaledb.telemetry_level = off"]
    with open(data / "postgresql.conf", "a") as f:
        f.write("\n# scripts/stack\n" + "\n".join(conf) + "\n")
    st.data.update(
        configured=True,
        port=port,
        base=str(base),
        bindir=str(bins),
        timescaledb=timescale,
        bootstrapped=False,
    )
    st.save()


def _paths(st: ServiceState) -> tuple[Path, Path, Path]:
    base = Path(st.str("base"))
    return Path(st.str("bindir")), base / "data", base / "postgres.log"


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
    return pid_alive(pid) and pid is not None and "postgres" in cmdline(pid)


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    if running(st):
        return
    bins, data, logfile = _paths(st)
    res = as_server_user(
        [str(bins / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60", "start"],
        check=False,
        new_session=True,
    )
    if res.returncode != 0:
        raise StackError(f"postgres did not start:\n{res.stdout}{res.stderr}\n{tail(logfile)}")
    if not st.data.get("bootstrapped"):
        bootstrap(st)


def bootstrap(st: ServiceState) -> None:
    """Create the recorder's role and database (superuser: it may CREATE EXTENSION, DATABASE)."""
    bins, _, _ = _paths(st)
    psql = [str(bins / "psql"), "-h", st.str("base"), "-p", str(st.int("port")), "-U", "postgres"]
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
        raise StackError(f"creating role/database failed:\n{res.stdout}{res.stderr}")
    st.data["bootstrapped"] = True
    st.save()


async def ready(st: ServiceState) -> None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=st.int("port"),
            user=USER,
            password=PASSWORD,
            database=DATABASE,
            timeout=5,
        )
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    _, _, logfile = _paths(st)
    await wait_ready(
        f"postgres at 127.0.0.1:{st.int('port')}",
        probe,
        READY_TIMEOUT,
        lambda: running(st),
        logfile,
    )


def stop(st: ServiceState, kill: bool = False) -> None:
    if not running(st):
        return
    bins, data, _ = _paths(st)
    # immediate = like a crash (recovery on restart); fast = clean shutdown, connections cut.
    mode = "immediate" if kill else "fast"
    as_server_user([str(bins / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "60", "stop"])


def address(st: ServiceState) -> str:
    return f"127.0.0.1:{st.int('port')}"


def env(st: ServiceState) -> dict[str, str]:
    return {
        "TIMESCALEDB_HOST": "127.0.0.1",
        "TIMESCALEDB_PORT": str(st.int("port")),
        "TIMESCALEDB_USER": USER,
        "TIMESCALEDB_PASSWORD": PASSWORD,
        "TIMESCALEDB_DB": DATABASE,
    }


def describe(st: ServiceState) -> str:
    mode = "TimescaleDB preloaded" if st.data.get("timescaledb") else "plain PostgreSQL mode"
    version = Path(st.str("bindir")).parent.name
    return f"{address(st)} (PostgreSQL {version}, {mode}, db {DATABASE}, logs {_paths(st)[2]})"


def remove(st: ServiceState) -> None:
    if st.configured:
        stop(st, kill=True)
        base = st.data.get("base")
        if isinstance(base, str) and Path(base).name.startswith("datarecorder-pg-"):
            shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(st.dir, ignore_errors=True)
