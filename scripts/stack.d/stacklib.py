"""Shared plumbing of scripts/stack: state paths, ports, detached processes, readiness waits.

Owns the layout of the state directory (.stack/) and how a service process is started and ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("DATARECORDER_STACK_DIR") or REPO / ".stack").resolve()
CACHE = Path(
    os.environ.get("DATARECORDER_CACHE") or Path.home() / ".cache" / "datarecorder"
).resolve()
# What to install when a tool is missing (Debian/Ubuntu package names).
JAVA_HINT = "apt-get install openjdk-17-jre-headless maven"
PG_HINT = "apt-get install postgresql"


class StackError(RuntimeError):
    """A service could not be prepared, started or reached; the message says why."""


def log(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    `stop`/`start` must get the same port back; a port from the ephemeral range could meanwhile
    become the local end of some client's connection, and the restart would then fail.
    """
    lo, _ = ephemeral_range()
    if lo > 12000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(10000, lo)
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass
class ServiceState:
    """What survives between `stack` invocations for one service (ports, paths, pids)."""

    name: str
    data: dict[str, object]

    @property
    def dir(self) -> Path:
        return STATE / self.name

    @property
    def file(self) -> Path:
        return self.dir / "state.json"

    @classmethod
    def load(cls, name: str) -> ServiceState:
        path = STATE / name / "state.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(name, data)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.file)

    @property
    def configured(self) -> bool:
        return bool(self.data.get("configured"))

    def int(self, key: str) -> int:
        value = self.data.get(key)
        if not isinstance(value, int):
            raise StackError(f"{self.name}: state has no {key}; run `scripts/stack down` and retry")
        return value

    def str(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise StackError(f"{self.name}: state has no {key}; run `scripts/stack down` and retry")
        return value

    def pid(self, key: str, marker: str) -> int | None:
        """The recorded pid if that process still runs our program (`marker` in its command
        line): after a reboot the number may belong to someone else, who must not be signalled."""
        value = self.data.get(key)
        if not isinstance(value, int) or not pid_alive(value):
            return None
        return value if marker in cmdline(value) else None


def spawn(
    argv: list[str], logfile: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Start a detached process (own session, so `stack` exiting does not end it); output to a file."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
            close_fds=True,
        )
    return proc.pid


def terminate(pid: int | None, timeout: float, kill: bool = False) -> None:
    """End a process started by `spawn` and its whole process group; SIGKILL after `timeout`."""
    if not pid_alive(pid):
        return
    assert pid is not None
    sig = signal.SIGKILL if kill else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        log(f"pid {pid} did not stop in {timeout:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
    # Reap it if it happens to be our child (it is not, normally: `stack` exits after starting).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


async def wait_ready(
    what: str,
    probe: Callable[[], Awaitable[None]],
    limit_s: float,
    alive: Callable[[], bool],
    logfile: Path,
) -> None:
    """Retry `probe` until it succeeds; fail fast if the process died, or after `limit_s`."""
    deadline = time.monotonic() + limit_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise StackError(
                f"{what} exited while starting; last lines of {logfile}:\n{tail(logfile)}"
            )
        try:
            await asyncio.wait_for(probe(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except Exception as exc:  # any failure means "not ready yet"
            last = exc
        await asyncio.sleep(0.25)
    raise StackError(
        f"{what} did not answer within {limit_s:.0f}s (last error: {last!r}); "
        f"last lines of {logfile}:\n{tail(logfile)}"
    )


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise `stack` commands on one state dir (parallel pytest sessions share one stack)."""
    import fcntl

    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
