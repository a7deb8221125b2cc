"""MinIO as a dev service: the pinned server binary in the cache, how it is built and started.

Owns the version pin, the build (once, under a lock, by scripts/bootstrap) and the server's argv
and environment; stack/s3.py decides when to run it. CLI: `python -m recorder.devstack.minio
build|path`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from recorder.devstack.procs import CACHE, ServiceError, log

# MinIO tags its releases RELEASE.<date>, not semver, so the module proxy serves it under
# pseudo-versions only; this is the newest one it served (`go list -m ...minio@latest`).
VERSION = os.environ.get("DATARECORDER_MINIO_VERSION", "v0.0.0-20260212201848-7aac2a2c5b7c")
MODULE = "github.com/minio/minio"
HOME = CACHE / f"minio-{VERSION}"
BINARY = HOME / "bin" / "minio"
BUILD_LOG = HOME / "build.log"
MARKER = "bin/minio server"  # how our server process is recognised in /proc/<pid>/cmdline


def built() -> bool:
    return os.access(BINARY, os.X_OK)


def build() -> Path:
    """`go install` the pinned MinIO into the cache (a no-op when present; one builder at a time)."""
    if built():
        return BINARY
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if not go:
        raise ServiceError("go is not installed; it builds MinIO once (install Go >= 1.24)")
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second bootstrap waits for the first one's build
        if built():
            return BINARY
        tmp = HOME / "bin.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building MinIO {VERSION} into {BINARY} (log: {BUILD_LOG})")
        t0 = time.monotonic()
        env = dict(os.environ, GOBIN=str(tmp), CGO_ENABLED="0")
        # -trimpath and a stripped link: the link is the slow step on two cores.
        argv = [go, "install", "-trimpath", "-ldflags=-s -w", f"{MODULE}@{VERSION}"]
        with open(BUILD_LOG, "w") as out:
            res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=HOME)
        if res.returncode != 0:
            tail = "\n".join(BUILD_LOG.read_text(errors="replace").splitlines()[-30:])
            raise ServiceError(f"build of MinIO {VERSION} failed (log: {BUILD_LOG}):\n{tail}")
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "minio").replace(BINARY)  # atomic: `built()` never sees half a binary
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"built MinIO in {time.monotonic() - t0:.0f}s")
    return BINARY


def argv(port: int, console_port: int, data: Path) -> list[str]:
    return [
        str(BINARY),
        "server",
        "--quiet",
        "--address",
        f"127.0.0.1:{port}",
        "--console-address",
        f"127.0.0.1:{console_port}",
        str(data),
    ]


def environment(access_key: str, secret_key: str, region: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "AWS_"))
    }  # a user's MinIO or AWS settings must not leak into the test server
    env.update(
        MINIO_ROOT_USER=access_key,
        MINIO_ROOT_PASSWORD=secret_key,
        MINIO_REGION=region,
        MINIO_BROWSER="off",  # no web console: less memory and one port fewer to serve
        MINIO_UPDATE="off",  # no update check (there is no network here anyway)
        # A single drive on the root filesystem is refused outside CI/CD mode.
        MINIO_CI_CD="on",
    )
    return env


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if cmd == "build":
            print(build())
        elif cmd == "path":
            print(BINARY if built() else "")
            return 0 if built() else 1
        else:
            print(f"usage: {sys.argv[0]} build|path", file=sys.stderr)
            return 2
    except ServiceError as exc:
        print(f"minio: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
