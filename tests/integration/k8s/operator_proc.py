"""A datarecorder operator process (`python -m datarecorder_operator run`) for the k8s tests.

Owns starting it against the control plane of scripts/k8s, its liveness wait, log and stop.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.k8s import K8s, wait_for

ROOT = Path(__file__).resolve().parents[3]


class Operator:
    """One operator process watching one namespace; its log is kept for failure messages."""

    def __init__(
        self,
        k8s: K8s,
        namespace: str,
        log_path: Path,
        kubeconfig: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.k8s, self.namespace, self.log_path = k8s, namespace, log_path
        port = _free_port()
        self.liveness = f"http://127.0.0.1:{port}/healthz"
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "datarecorder_operator", "run",
                "--namespace", namespace, "--tick", "1", "--resync", "2",
                "--liveness", self.liveness, "--verbose", *extra_args,
            ],
            cwd=ROOT,
            env={**k8s.env, "KUBECONFIG": str(kubeconfig or k8s.kubeconfig)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_traceback_while_running(self) -> None:
        """Tracebacks logged before the stop signal are bugs even when every assertion held.

        (The shutdown itself is not judged here: a timer tick racing kopf's cleanup handler
        that closes the HTTP session logs "Connector is closed"; reported, not ours to fix.)
        """
        running = self.log().split("Signal SIGTERM is received", 1)[0]
        assert "Traceback" not in running, running[-6000:]

    def wait_alive(self, timeout: float = 60) -> None:
        def alive() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"operator exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(self.liveness, timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(alive, timeout=timeout, what="the operator's liveness endpoint")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release (a node lost, an OOM kill)."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
