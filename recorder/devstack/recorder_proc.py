"""Run `datarecorder run` (and `produce`, `verify`) as real subprocesses for tests and benchmarks.

Owns start (waits for /ready), graceful stop (SIGTERM), crash (SIGKILL), peak RSS sampling
and the per-process log file; tests never import the pipeline to "run" it in-process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from recorder.devstack.procs import free_port

__all__ = ["RecorderProcess", "free_port", "http_get", "produce", "verify", "wait_until"]
RSS_SAMPLE_S = 0.2
READY_POLL_S = 0.2


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class RecorderProcess:
    """One recorder process; `env` is the full environment (see the `recorder_env` fixture)."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    peak_rss: int = 0
    _sampler: threading.Thread | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The recorder's command line (a profiling runner wraps it by overriding this)."""
        return [sys.executable, "-m", "recorder.cli", "run"]

    def start(self, *, wait_ready: float | None = 60.0) -> RecorderProcess:
        env = dict(self.env, HTTP_PORT=str(self.port), PYTHONUNBUFFERED="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self._log = log
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        if wait_ready:
            self.wait_ready(wait_ready)
        return self

    def _sample(self) -> None:
        proc = self.proc
        assert proc is not None
        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                self.peak_rss = max(self.peak_rss, ps.memory_info().rss)
                time.sleep(RSS_SAMPLE_S)
        except psutil.Error:
            pass

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"recorder exited with {self.proc.returncode}; log: {self.tail()}"
                )
            try:
                status, _ = http_get(self.url + "/ready", 1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(READY_POLL_S)
        raise TimeoutError(f"recorder not ready after {timeout}s; log: {self.tail()}")

    def health(self) -> tuple[int, str]:
        return http_get(self.url + "/health")

    def metrics_text(self) -> str:
        return http_get(self.url + "/metrics")[1]

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM and wait; returns (exit code, seconds to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def ensure_stopped(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.wait(30)


def produce(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    """`datarecorder produce ARGS` with `env`; returns its stdout."""
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "produce", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"produce failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def verify(env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    """`datarecorder verify --json`; returns the report."""
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if res.returncode not in (0, 1) or not res.stdout.strip():
        raise RuntimeError(f"verify failed ({res.returncode}): {res.stderr[-3000:]}")
    for line in res.stderr.splitlines():
        if line.startswith("verify:"):
            print(line)  # shown with the test's output when it fails
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.5, what: str = "condition"
) -> None:
    """Poll `predicate` every `interval` until it is true; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s")
