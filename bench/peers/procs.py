"""Start and stop the peer programs: a Kafka Connect standalone worker and Benthos.

Owns their command lines, the config files rendered from the templates beside this module
(`${name}` placeholders, filled by `render`, a pure function) and the log file per run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.peers.build import ensure_benthos, ensure_connect

HERE = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")


def render(template: str, values: Mapping[str, object]) -> str:
    """`${name}` -> values[name]; a placeholder without a value is an error naming it."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder ${{{m.group(1)}}} has no value")
        return str(values[m.group(1)])

    return _PLACEHOLDER.sub(sub, template)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PeerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def _spawn(name: str, argv: list[str], log_path: Path, env: Mapping[str, str]) -> PeerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return PeerProcess(name, proc, log_path)


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
        "rest_port": _free_port(),
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
    argv = [str(binary), "--log.level", "warn", "--set", f"http.address=127.0.0.1:{_free_port()}"]
    argv += ["-c", str(config)]
    return _spawn("benthos", argv, workdir / f"benthos-{config.stem}.log", {**os.environ, **env})
