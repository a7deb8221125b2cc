"""Apache Iceberg's REST catalog test server as a dev service: its jars in the cache, its start.

Owns the version pin, the jars (resolved once with Maven by scripts/bootstrap, never inside a
test), the server's command line and environment (a JDBC catalog on a PostgreSQL database or
sqlite, the warehouse on the stack's S3 through S3FileIO) and `start`, which waits until
`GET /v1/config` answers. The server is `org.apache.iceberg.rest.RESTCatalogServer`, the one
the apache/iceberg-rest-fixture image runs: Iceberg's own REST protocol over its
`CatalogHandlers`, so a commit's requirements are checked as every Iceberg catalog checks them.
CLI: `python -m recorder.devstack.iceberg_rest build|path`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recorder.devstack import maven
from recorder.devstack.procs import (
    CACHE,
    JAVA_HINT,
    Child,
    ServiceError,
    free_port,
    locked,
    log,
    spawn_child,
    wait_ready,
)

VERSION = os.environ.get("DATARECORDER_ICEBERG_REST_VERSION", "1.10.1")
POM = Path(__file__).with_name("iceberg-rest-pom.xml")
HOME = CACHE / f"iceberg-rest-{VERSION}"
JARS = HOME / "lib"
MAIN = "org.apache.iceberg.rest.RESTCatalogServer"
# The JVM boots in about a second; a loaded two-core machine may take many times that.
START_TIMEOUT_S = 90.0
PROBE_TIMEOUT_S = 2.0
HEAP = "384m"


def built() -> bool:
    return maven.complete(JARS)


def build() -> Path:
    """Resolve the server's jars into the cache (a no-op when there; one builder at a time)."""
    if built():
        return JARS
    HOME.mkdir(parents=True, exist_ok=True)
    with locked(HOME / "build.lock"):
        if not built():
            log(f"resolving the Iceberg REST catalog {VERSION} jars with Maven (once) into {JARS}")
        return maven.copy_dependencies(
            POM, JARS, {"iceberg.version": VERSION}, "the Iceberg REST catalog", VERSION
        )


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceError(f"the Iceberg REST catalog needs Java 17+ (`{JAVA_HINT}`)")
    return java


@dataclass(frozen=True)
class Backend:
    """Where the server keeps its catalog and its tables' files."""

    jdbc_uri: str  # jdbc:postgresql://host:port/db or jdbc:sqlite:/path
    warehouse: str  # s3://bucket/prefix
    s3_endpoint: str
    s3_region: str
    access_key: str
    secret_key: str
    jdbc_user: str = ""
    jdbc_password: str = ""


def argv(java: str) -> list[str]:
    return [java, f"-Xmx{HEAP}", "-XX:TieredStopAtLevel=1", "-cp", f"{JARS}/*", MAIN]


def environment(port: int, backend: Backend) -> dict[str, str]:
    """The server's configuration: RCKUtils reads every CATALOG_* variable as a catalog
    property (`__` → `-`, `_` → `.`)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CATALOG_", "AWS_"))  # nobody else's catalog or credentials
    }
    env.update(
        CATALOG_REST_PORT=str(port),
        CATALOG_CATALOG__IMPL="org.apache.iceberg.jdbc.JdbcCatalog",
        CATALOG_URI=backend.jdbc_uri,
        CATALOG_WAREHOUSE=backend.warehouse,
        CATALOG_IO__IMPL="org.apache.iceberg.aws.s3.S3FileIO",
        CATALOG_S3_ENDPOINT=backend.s3_endpoint,
        CATALOG_S3_PATH__STYLE__ACCESS="true",
        CATALOG_CLIENT_REGION=backend.s3_region,
        AWS_ACCESS_KEY_ID=backend.access_key,
        AWS_SECRET_ACCESS_KEY=backend.secret_key,
        AWS_REGION=backend.s3_region,
    )
    if backend.jdbc_user:
        env["CATALOG_JDBC_USER"] = backend.jdbc_user
        env["CATALOG_JDBC_PASSWORD"] = backend.jdbc_password
    return env


async def start(backend: Backend, log_path: Path, port: int | None = None) -> tuple[Child, str]:
    """Start a server on `backend` (the jars must be built); (the process, its base URL) once
    `GET /v1/config` answers. The process dies with the caller."""
    if not built():
        raise ServiceError(
            f"the Iceberg REST catalog's jars are not in {JARS}: run `bash scripts/bootstrap` "
            "(or `python -m recorder.devstack.iceberg_rest build`)"
        )
    port = port or free_port()
    child = spawn_child(
        "iceberg-rest",
        argv(java_binary()),
        log_path,
        env=environment(port, backend),
        truncate=True,
    )
    url = f"http://127.0.0.1:{port}"

    async def probe() -> None:
        def get() -> None:
            with urllib.request.urlopen(f"{url}/v1/config", timeout=PROBE_TIMEOUT_S) as answer:
                answer.read()

        await asyncio.to_thread(get)

    try:
        await wait_ready(
            "the Iceberg REST catalog",
            probe,
            START_TIMEOUT_S,
            child.alive,
            log_path,
            pid=child.pid,
        )
    except BaseException:
        child.stop()
        raise
    return child, url


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if cmd == "build":
            print(build())
        elif cmd == "path":
            print(JARS if built() else "")
            return 0 if built() else 1
        else:
            print(f"usage: {sys.argv[0]} build|path", file=sys.stderr)
            return 2
    except ServiceError as exc:
        print(f"iceberg-rest: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
