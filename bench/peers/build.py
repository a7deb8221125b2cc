"""The peers' programs in the cache: Kafka Connect's jars (Maven) and a Benthos binary (Go).

Owns where they live (${DATARECORDER_CACHE:-~/.cache/datarecorder}/peers/...) and how they are
made, once and under a lock; scripts/bootstrap runs `python -m bench.peers.build` so that no
timed step ever builds. `ensure_*` return at once when the build is there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(
    os.environ.get("DATARECORDER_CACHE") or Path.home() / ".cache" / "datarecorder"
).resolve()
CONNECT_POM = HERE / "connect" / "pom.xml"
BENTHOS_SRC = HERE / "benthos"


class BuildError(RuntimeError):
    """A peer could not be built; the message names the step and its log."""


def _version(tag: str, pom: Path) -> str:
    text = pom.read_text()
    return text.split(f"<{tag}>", 1)[1].split("<", 1)[0]


def connect_home() -> Path:
    kafka = _version("kafka.version", CONNECT_POM)
    debezium = _version("debezium.version", CONNECT_POM)
    return CACHE / "peers" / f"connect-{kafka}-debezium-{debezium}"


def benthos_binary() -> Path:
    mod = (BENTHOS_SRC / "go.mod").read_text()
    version = mod.split("github.com/benthosdev/benthos/v4 ", 1)[1].split()[0]
    return CACHE / "peers" / f"benthos-{version}" / "benthos"


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a second builder waits for the first one's result
        yield


def _log(msg: str) -> None:
    print(f"peers: {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], logfile: Path, what: str, **kw: object) -> None:
    with open(logfile, "w") as out:
        res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"{what} failed (log: {logfile}):\n{tail}")


def ensure_connect() -> Path:
    """<home>/libs: the worker's classpath; <home>/plugins/jdbc: the sink plugin (plugin.path)."""
    home = connect_home()
    if (home / ".complete").exists():
        return home
    mvn = shutil.which("mvn")
    if not mvn:
        raise BuildError("mvn (Maven) not found; it resolves Kafka Connect's jars")
    with _lock(home.with_name(home.name + ".lock")):
        if (home / ".complete").exists():
            return home
        t0 = time.monotonic()
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _log(f"resolving Kafka Connect + Debezium JDBC sink jars with Maven into {home}")
        for profile, out in (
            ("worker", partial / "libs"),
            ("plugin", partial / "plugins" / "jdbc"),
        ):
            argv = [
                mvn, "-q", "-B", "-f", str(CONNECT_POM), f"-P{profile}",
                "dependency:copy-dependencies", f"-DoutputDirectory={out}",
                f"-Dmaven.repo.local={CACHE / 'm2'}",
            ]  # fmt: skip
            _run(argv, partial / f"mvn-{profile}.log", f"Maven ({profile})")
        (partial / ".complete").write_text("")
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)
        _log(f"Kafka Connect ready in {time.monotonic() - t0:.0f}s")
    return home


def ensure_benthos() -> Path:
    binary = benthos_binary()
    if os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists() and not shutil.which(go):
        raise BuildError("go not found; it builds the Benthos peer")
    with _lock(binary.with_name("build.lock")):
        if os.access(binary, os.X_OK):
            return binary
        t0 = time.monotonic()
        _log(f"building Benthos into {binary} (a few minutes, once)")
        tmp = binary.with_name("benthos.partial")
        # parquet-go reaches into the runtime with go:linkname, which Go >= 1.23 refuses
        # unless the check is off.
        argv = [
            go,
            "build",
            "-trimpath",
            "-buildvcs=false",
            "-ldflags=-s -w -checklinkname=0",
            "-o",
            str(tmp),
            ".",
        ]
        env = dict(os.environ, CGO_ENABLED="0")
        _run(argv, binary.with_name("build.log"), "go build (Benthos)", cwd=BENTHOS_SRC, env=env)
        tmp.replace(binary)
        _log(f"Benthos built in {time.monotonic() - t0:.0f}s")
    return binary


def main(argv: list[str]) -> int:
    wanted = argv or ["connect", "benthos"]
    try:
        for name in wanted:
            path = {"connect": ensure_connect, "benthos": ensure_benthos}[name]()
            print(f"{name}: {path}")
    except (BuildError, KeyError) as exc:
        print(f"peers: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
