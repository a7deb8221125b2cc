"""Ports, processes and readiness waits shared by every dev service (stack, demo, bench, tests).

Owns the cache location, picking a free loopback port, spawning a server in its own session
(optionally killed with its parent), ending a process group, "retry a probe until it answers",
and saying in one line why a server that did not come up failed (its exit status, its last words).

A little over 400 lines: every dev server uses all of these helpers together; split, each piece
would import the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
# How long `spawn` waits for the kernel to finish exec'ing the new program (normally well
# under a millisecond; seconds on a loaded machine paging the binary in).
EXEC_WAIT_S = 30.0
EXEC_POLL_S = 0.001


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


# Ports this process has handed out: free when chosen, but their server may not have bound
# them yet (`scripts/stack up` chooses Kafka's, PostgreSQL's, the bridge's and S3's ports
# before any of them listens), so they are never handed out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, never one this process has
    handed out before.

    `scripts/stack stop`/`start` must get the same port back; a port from the ephemeral range
    could meanwhile become the local end of some client's connection, and the restart would
    then fail. Everyone else (demo, recorder processes, peers) is served as well by it.
    """
    lo, _ = ephemeral_range()
    if lo > 12000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(10000, lo)
            if port not in _HANDED_OUT and port_is_free(port):
                _HANDED_OUT.add(port)
                return port
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise ServiceError("no free loopback port found")


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


def tail(path: Path, lines: int = 25, width: int = 400) -> str:
    """The last `lines` lines of `path`, each cut to `width` characters (a crashed Node prints
    the offending line of minified JavaScript: 100 kB)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 256 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(_cut(line, width) for line in text.splitlines()[-lines:])


def _cut(line: str, width: int) -> str:
    line = line.rstrip()
    return line if len(line) <= width else line[: width - 1] + "…"


# A line that states a failure: "Error: listen EADDRINUSE …", "RangeError: …",
# "org.apache.kafka.common.KafkaException: …", "FATAL:  could not …", "… ERROR … ".
_CAUSE = re.compile(
    r"(?:^|[\s(])[\w.$]*(?:Error|Exception)(?:\s*\[[^\]]*\])?:|\b(?:FATAL|PANIC|ERROR)\b|"
    r"^\s*(?:fatal|panic|error):"
)
# Lines that never say why: stack frames, Node's caret and version banner, lone brackets.
_NOISE = re.compile(r"^\s*(?:at\s|\^+\s*$|Node\.js v\d|[{}()\[\],;]*\s*$)")


def last_words(logs: Sequence[Path], width: int = 300) -> str:
    """Why a process failed, from its logs (first match wins, logs in the order given): the
    last line that states an error, else the last line that is not noise."""
    fallback = ""
    for path in logs:
        lines = tail(path, 60, width).splitlines()
        causes = [line.strip() for line in lines if _CAUSE.search(line)]
        if causes:
            return causes[-1]
        if not fallback:
            fallback = next((ln.strip() for ln in reversed(lines) if not _NOISE.match(ln)), "")
    return fallback or "no output in " + ", ".join(str(p) for p in logs)


def describe_exit(code: int | None) -> str:
    """`exit status 1`, `killed by SIGKILL`, or that the status is not ours to know."""
    if code is None:
        return "exit status unknown: not started by this process"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


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
        proc = subprocess.Popen(
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
    _SPAWNED[proc.pid] = proc
    _wait_exec(proc)
    return proc


# The processes this one started, by pid: while they run they are ours whatever /proc shows,
# and when they end their exit status is ours to read (and to report).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def _wait_exec(proc: subprocess.Popen[bytes]) -> None:
    """Until the kernel has put the new program's command line in place (or it exited).

    Popen returns as soon as the child's exec has closed the close-on-exec pipe Popen waits
    on, which is before the kernel sets up the new program's arguments: for that moment
    /proc/<pid>/cmdline is empty, and "is that pid still our server?" (a marker in its command
    line, ServiceState.pid) answers no. On a loaded machine the moment lasts long enough for
    `scripts/stack up` to call a booting server dead ("exited while starting", empty log).
    """
    deadline = time.monotonic() + EXEC_WAIT_S
    while proc.poll() is None and not cmdline(proc.pid) and time.monotonic() < deadline:
        time.sleep(EXEC_POLL_S)


def runs(pid: int | None, marker: str) -> bool:
    """`pid` runs our program: a process this one spawned and has not seen end, or (spawned by
    an earlier `scripts/stack`) a live process whose command line contains `marker`."""
    if not pid:
        return False
    proc = _SPAWNED.get(pid)
    if proc is not None:
        return proc.poll() is None
    return pid_alive(pid) and marker in cmdline(pid)


def exit_status(pid: int | None) -> int | None:
    """The exit status of a process this one spawned and that has ended (negative: killed by
    that signal); None while it runs or when it is not ours."""
    proc = _SPAWNED.get(pid) if pid else None
    return None if proc is None else proc.poll()


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
    proc = _SPAWNED.get(pid)
    if proc is not None:
        proc.poll()
    else:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def why_failed(what: str, event: str, logs: Sequence[Path], context: int = 12) -> str:
    """`<what> <event>: <last words>; log <path>` on one line, then the logs' last lines."""
    first = f"{what} {event}: {last_words(logs)}; log {', '.join(str(p) for p in logs)}"
    shown = [f"  | {line}" for path in logs for line in tail(path, context, 200).splitlines()]
    return "\n".join([first, *shown])


def note_exit(logfile: Path, pid: int, status: str) -> None:
    """Append the exit status of a server to its own log (which it could not write itself)."""
    with contextlib.suppress(OSError), open(logfile, "a") as f:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        f.write(f"{stamp} devstack: pid {pid} exited while starting ({status})\n")


async def wait_ready(
    what: str,
    probe: Callable[[], Awaitable[None]],
    limit_s: float,
    alive: Callable[[], bool],
    logfile: Path | Sequence[Path],
    *,
    pid: int | None = None,
) -> None:
    """Retry `probe` until it succeeds; fail fast if the process died, or after `limit_s`.

    `logfile`: the process's own output first (where its stderr goes), then any log of its
    own; `pid`: the process, for its exit status (noted in the first log) when it dies."""
    logs = [logfile] if isinstance(logfile, Path) else list(logfile)
    deadline = time.monotonic() + limit_s

    def died() -> ServiceError:
        status = describe_exit(exit_status(pid))
        message = why_failed(what, f"exited while starting ({status})", logs)
        if pid and exit_status(pid) is not None:
            note_exit(logs[0], pid, status)
        return ServiceError(message)

    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise died()
        # One attempt may take the time that is left (a server that accepted the connection
        # answers when it has booted), but the process is watched meanwhile: a probe that hangs
        # on somebody else's socket must not hide that ours has died.
        attempt = asyncio.ensure_future(probe())
        try:
            while not attempt.done() and time.monotonic() < deadline and alive():
                await asyncio.wait({attempt}, timeout=PROBE_INTERVAL_S)
        finally:
            if not attempt.done():
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
        if not attempt.cancelled():
            last = attempt.exception()
            if last is None:
                return
        await asyncio.sleep(PROBE_INTERVAL_S)
    raise ServiceError(
        why_failed(what, f"did not answer within {limit_s:.0f}s (last error: {last!r})", logs)
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
