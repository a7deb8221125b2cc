"""Ports, processes and readiness waits shared by every dev service (stack, demo, bench, tests).

Owns the cache location, picking a free loopback port, spawning a server in its own session
(optionally killed with its parent), ending a process group, and "retry a probe until it answers".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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

CACHE = Path(
    os.environ.get("DATARECORDER_CACHE") or Path.home() / ".cache" / "datarecorder"
).expanduser()
# What to install when a tool is missing (Debian/Ubuntu package names).
JAVA_HINT = "apt-get install openjdk-17-jre-headless maven"
PG_HINT = "apt-get install postgresql"
# How often a readiness probe is retried, and how often a stopping process is checked.
PROBE_INTERVAL_S = 0.25
EXIT_POLL_S = 0.05


class ServiceError(RuntimeError):
    """A service could not be found, prepared, started or reached; the message says what to do."""


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

    `scripts/stack stop`/`start` must get the same port back; a port from the ephemeral range
    could meanwhile become the local end of some client's connection, and the restart would
    then fail. Everyone else (demo, recorder processes, peers) is served as well by it.
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


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (a broker and its controller, a server and its console)."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pid_alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie counts as dead; another user's process as alive)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
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


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec hook: the kernel sends `sig` to the child when its parent dies, so a killed
    demo (SIGKILL, a crashed terminal) leaves no broker or database behind."""

    def hook() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return hook


def spawn(
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    death_signal: int | None = None,
    truncate: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (Ctrl-C in the caller's terminal does not reach it),
    output to `log_path`. `death_signal`: sent to it when the caller dies (None: it outlives
    the caller, as `scripts/stack`'s servers must)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb" if truncate else "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
            close_fds=True,
            preexec_fn=None if death_signal is None else _die_with_parent(death_signal),
        )


@dataclass
class Child:
    """A process the caller started and owns (the demo's servers, the benchmark's peers)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the process, wait up to `timeout`, then SIGKILL its whole process group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Anything left in the group (the child itself, or helpers it forked) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.proc.returncode


def spawn_child(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    death_signal: int = signal.SIGKILL,
    truncate: bool = False,
) -> Child:
    """`spawn` a process that dies with the caller, as a `Child` to stop later."""
    proc = spawn(
        argv,
        log_path,
        env=env,
        cwd=cwd,
        user=user,
        death_signal=death_signal,
        truncate=truncate,
    )
    return Child(name, proc, log_path)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(EXIT_POLL_S)
    return not pid_alive(pid)


def terminate(pid: int | None, timeout: float, kill: bool = False) -> None:
    """End a process started by `spawn` and its whole process group; SIGKILL after `timeout`."""
    if pid is None or not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        log(f"pid {pid} did not stop in {timeout:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, float("inf"))
    # Reap it if it happens to be our child (normally not: `stack` exits after starting it).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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
            raise ServiceError(
                f"{what} exited while starting; last lines of {logfile}:\n{tail(logfile)}"
            )
        try:
            await asyncio.wait_for(probe(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except Exception as exc:  # any failure means "not ready yet"
            last = exc
        await asyncio.sleep(PROBE_INTERVAL_S)
    raise ServiceError(
        f"{what} did not answer within {limit_s:.0f}s (last error: {last!r}); "
        f"last lines of {logfile}:\n{tail(logfile)}"
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created), held for the `with` block, across processes."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
