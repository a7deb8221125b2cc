"""Start and stop the peer programs: a Kafka Connect standalone worker and Benthos.

Owns their command lines, the config files rendered from the templates beside this module
(`${name}` placeholders, filled by `render`, a pure function) and the log file per run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from bench.peers.build import ensure_benthos, ensure_connect
from recorder.devstack.procs import Child, free_port, spawn_child

# A peer is a child of the benchmark, stopped by it (SIGTERM, then its group killed).
PeerProcess = Child

HERE = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


def render(template: str, values: Mapping[str, object]) -> str:
    """`${name}` -> values[name]; a placeholder without a value is an error naming it."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder ${{{m.group(1)}}} has no value")
        return str(values[m.group(1)])

    return _PLACEHOLDER.sub(sub, template)


def _spawn(name: str, argv: list[str], log_path: Path, env: Mapping[str, str]) -> PeerProcess:
    return spawn_child(name, argv, log_path, env=dict(env), truncate=True)


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found:
        raise RuntimeError("java not found: Kafka Connect needs a JDK 17+")
    return found


def start_connect(
    *, workdir: Path, brokers: str, topic: str, pg: Mapping[str, str], database: str, name: str
) -> PeerProcess:
    """A standalone worker with the JDBC sink connector; it starts consuming at once."""
    home = ensure_connect()
    workdir.mkdir(parents=True, exist_ok=True)
    values = {
        "brokers": brokers,
        "state": workdir,
        "plugins": home / "plugins",
        "rest_port": free_port(),
        "name": name,
        "topic": topic,
        "database": database,
        **pg,
    }
    worker = workdir / "worker.properties"
    sink = workdir / "jdbc-sink.properties"
    worker.write_text(render((HERE / "connect" / "worker.properties").read_text(), values))
    sink.write_text(render((HERE / "connect" / "jdbc-sink.properties").read_text(), values))
    log_path = workdir / "connect.log"
    argv = [
        java(),
        "-Xms256m",
        "-Xmx1g",
        f"-Dlog4j2.configurationFile={HERE / 'connect' / 'log4j2.properties'}",
        f"-Dconnect.log={log_path}",
        "-cp",
        f"{home / 'libs'}/*",
        "org.apache.kafka.connect.cli.ConnectStandalone",
        str(worker),
        str(sink),
    ]
    return _spawn("connect", argv, workdir / "connect.out", os.environ)


def start_benthos(*, workdir: Path, pipeline: str, env: Mapping[str, str]) -> PeerProcess:
    """Benthos running `pipeline` (a YAML file beside this module); ${VARS} come from `env`."""
    binary = ensure_benthos()
    workdir.mkdir(parents=True, exist_ok=True)
    config = HERE / "benthos" / pipeline
    # Its HTTP server (metrics, /ready) on a free port: the default 4195 may be taken.
    argv = [str(binary), "--log.level", "warn", "--set", f"http.address=127.0.0.1:{free_port()}"]
    argv += ["-c", str(config)]
    return _spawn("benthos", argv, workdir / f"benthos-{config.stem}.log", {**os.environ, **env})
