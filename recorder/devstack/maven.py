"""Jars of a Java dev service resolved once by Maven from a pom of ours into the cache.

Owns the one way a service's classpath directory is made: `mvn dependency:copy-dependencies`
into a partial directory beside it (Maven's own repository in the cache too, so the cache dir
is all there is), marked complete and renamed into place only when Maven succeeded, so a run
cut short is never taken for a classpath.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from recorder.devstack.procs import CACHE, JAVA_HINT, ServiceError


def complete(target: Path) -> bool:
    return (target / ".complete").exists()


def copy_dependencies(
    pom: Path, target: Path, properties: dict[str, str], what: str, version: str
) -> Path:
    """`pom`'s dependencies (with `properties` set: the version it resolves) into `target`."""
    if complete(target):
        return target
    mvn = shutil.which("mvn")
    if not mvn:
        raise ServiceError(
            f"{what} {version} is not in {target} and Maven (mvn), which fetches it once "
            f"from Maven Central, is not installed (`{JAVA_HINT}`)"
        )
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        *(f"-D{key}={value}" for key, value in properties.items()),
        f"-DoutputDirectory={partial}",
        f"-Dmaven.repo.local={CACHE / 'm2'}",
    ]
    res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise ServiceError(
            f"Maven could not fetch {what} {version}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        )
    (partial / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
