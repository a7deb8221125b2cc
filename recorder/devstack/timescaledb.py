"""Native TimescaleDB (Apache edition) from the folder `scripts/timescaledb build` unpacked.

Owns finding that folder in the cache and making a runnable copy of it: Debian trixie's
PostgreSQL 17 + TimescaleDB 2.19 need trixie's libc, newer than the host's, so each binary is
started through the folder's own loader by a small wrapper. Used by `datarecorder demo --db
timescaledb` and by scripts/stack's `timescale` service.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from recorder.devstack.procs import CACHE, ServiceError

# The binaries a cluster needs; each gets a wrapper (initdb and pg_ctl exec `postgres` by path).
WRAPPED = ("postgres", "initdb", "pg_ctl", "psql", "pg_isready")
PG_DIR = Path("usr/lib/postgresql/17")
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
# What the server must be started with: the extension preloaded; no JIT (libLLVM, 130 MB, is
# not unpacked, and short queries gain nothing from it).
SERVER_SETTINGS = {
    "shared_preload_libraries": "timescaledb",
    "timescaledb.telemetry_level": "off",
    "jit": "off",
}


class NotFetched(ServiceError):
    """The unpacked folder is not in the cache (the message says how to get it)."""


def cached_root() -> Path:
    root = CACHE / "timescaledb-trixie" / "root"
    if not (root / ".complete").exists():
        raise NotFetched(
            f"native TimescaleDB is not in {root}: run `scripts/timescaledb build` from a "
            "checkout of this repository (scripts/bootstrap does; about 40 s, 160 MB)"
        )
    return root


def wrapper(root: Path, real: Path) -> str:
    """A shell script that runs `real` through the root's loader and libraries.

    --argv0 keeps the wrapper's path as argv[0]: PostgreSQL finds its share and lib folders
    relative to it, and initdb/pg_ctl then exec the wrapped `postgres` beside it."""
    libs = ":".join(str(root / d) for d in LIB_DIRS)
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    return f'#!/bin/sh\nexec {loader} --library-path {libs} --argv0 "$0" {real} "$@"\n'


def make_run_root(base: Path) -> Path:
    """A copy of the cached root under `base` (which the server user can reach, unlike a cache
    under a private home), hard-linked when possible (instant), with the wrapped binaries.
    Returns its bin folder."""
    source = cached_root()
    root = base / "root"
    res = subprocess.run(["cp", "-al", str(source), str(root)], capture_output=True, text=True)
    if res.returncode != 0:  # another filesystem: a real copy (160 MB, a second or two)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source, root, symlinks=True)
    bins = root / PG_DIR / "bin"
    real_dir = bins / ".real"
    real_dir.mkdir()
    for name in WRAPPED:
        real = real_dir / name
        (bins / name).rename(real)  # a new name for the link; the cache's file is untouched
        (bins / name).write_text(wrapper(root, real))
        (bins / name).chmod(0o755)
    return bins
