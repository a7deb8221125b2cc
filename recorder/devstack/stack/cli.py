"""The command line of `scripts/stack`: up, down, status, stop/start one service, env, release.

Owns the order of operations across services, the `.stack/env` file and the leases that let
several pytest sessions share one stack (the last one out stops a stack a fixture started).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Protocol

from recorder.devstack.procs import ServiceError, log, pid_alive, terminate
from recorder.devstack.stack import kafka, postgres, s3, timescale, timescale_full
from recorder.devstack.stack.state import ENV_FILE, LEASES, OWNER, STATE, ServiceState, locked


class Service(Protocol):
    """What each service module of this package provides (checked by mypy on SERVICES)."""

    def running(self, st: ServiceState) -> bool: ...
    def start(self, st: ServiceState) -> None: ...
    async def ready(self, st: ServiceState) -> None: ...
    def stop(self, st: ServiceState, kill: bool = False) -> None: ...
    def address(self, st: ServiceState) -> str: ...
    def env(self, st: ServiceState) -> dict[str, str]: ...
    def describe(self, st: ServiceState) -> str: ...
    def remove(self, st: ServiceState) -> None: ...


SERVICES: dict[str, Service] = {
    "kafka": kafka,
    "postgres": postgres,
    "timescale": timescale,
    "timescale-full": timescale_full,
    "s3": s3,
}


def states() -> dict[str, ServiceState]:
    return {name: ServiceState.load(name) for name in SERVICES}


def write_env(sts: dict[str, ServiceState]) -> None:
    env: dict[str, str] = {}
    for name, mod in SERVICES.items():
        if sts[name].configured:
            env.update(mod.env(sts[name]))
    lines = [f"# written by scripts/stack up; source it: . {ENV_FILE}"]
    lines += [f"export {k}={v}" for k, v in env.items()]
    ENV_FILE.write_text("\n".join(lines) + "\n")


def check_python_deps() -> None:
    missing = []
    for mod in ("aiokafka", "asyncpg", "boto3", "moto"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ServiceError(
            f"{sys.executable} lacks {', '.join(missing)}; run scripts/bootstrap "
            "(it creates .venv with the test extras)"
        )


def bring_up(names: list[str]) -> list[str]:
    """Start what is not running (keeping what is), wait until each answers; return failures."""
    check_python_deps()
    sts = states()
    failures: list[str] = []
    waiting: list[str] = []
    t0 = time.monotonic()
    for name in names:
        st, mod = sts[name], SERVICES[name]
        try:
            if not mod.running(st):
                mod.start(st)
            waiting.append(name)
        except ServiceError as exc:
            failures.append(f"{name}: {exc}")

    async def wait_all() -> list[BaseException | None]:
        results = await asyncio.gather(
            *(SERVICES[n].ready(sts[n]) for n in waiting), return_exceptions=True
        )
        return list(results)

    for name, res in zip(waiting, asyncio.run(wait_all()), strict=True):
        if res is None:
            print(f"{name:<9} up  {SERVICES[name].describe(sts[name])}", flush=True)
        else:
            failures.append(f"{name}: {res}")
    write_env(sts)
    log(f"ready in {time.monotonic() - t0:.1f}s; environment in {ENV_FILE}")
    return failures


def our_stray_processes() -> list[int]:
    """Our servers whose pid we lost (a crashed `stack`): their command line names our state.

    Only server processes count (not, say, someone's `tail -f .stack/kafka/server.log`).
    """
    marks = [f"{STATE}/"]
    for name in ("postgres", "timescale"):
        base = ServiceState.load(name).data.get("base")
        if isinstance(base, str):
            marks.append(f"{base}/")
    # The native TimescaleDB server runs as the trixie loader with bin/.real/postgres as its program.
    servers = (
        "kafka.Kafka",
        "kafka.tools.StorageTool",
        "bin/postgres",
        "bin/.real/postgres",
        timescale_full.BRIDGE.name,
        "bin/minio",
    )
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in marks) and any(s in cmd for s in servers):
            found.append(int(proc.name))
    return found


def tear_down() -> None:
    sts = states()
    for name, mod in SERVICES.items():
        if sts[name].configured or sts[name].dir.exists():
            mod.remove(sts[name])
    for pid in our_stray_processes():
        if pid_alive(pid):
            log(f"ending leftover process {pid}")
            terminate(pid, timeout=10)
    for path in (ENV_FILE, OWNER):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    shutil.rmtree(LEASES, ignore_errors=True)
    left = [p for p in our_stray_processes() if pid_alive(p)]
    if left:
        raise ServiceError(f"processes still running after down: {left}")
    print("stack down: no service process left", flush=True)


def live_leases() -> list[int]:
    if not LEASES.exists():
        return []
    alive = []
    for f in LEASES.iterdir():
        if f.name.isdigit() and pid_alive(int(f.name)):
            alive.append(int(f.name))
        else:
            f.unlink(missing_ok=True)
    return alive


def cmd_up(args: argparse.Namespace) -> int:
    with locked():
        if args.lease:
            LEASES.mkdir(parents=True, exist_ok=True)
            (LEASES / str(args.lease)).write_text("")
            if not OWNER.exists():
                OWNER.write_text("fixture")
        else:
            OWNER.write_text("manual")  # someone wants it kept: no fixture may stop it
        failures = bring_up(list(SERVICES))
    for f in failures:
        print(f"stack: FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


def cmd_release(args: argparse.Namespace) -> int:
    with locked():
        (LEASES / str(args.lease)).unlink(missing_ok=True)
        owner = OWNER.read_text().strip() if OWNER.exists() else ""
        others = live_leases()
        if owner == "fixture" and not others:
            tear_down()
        else:
            log(f"stack kept (owner={owner or 'none'}, other sessions: {others})")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    with locked():
        tear_down()
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    sts = states()
    all_up = True
    for name, mod in SERVICES.items():
        st = sts[name]
        if not st.configured:
            print(f"{name:<9} absent")
            all_up = False
        elif mod.running(st):
            print(f"{name:<9} up    {mod.address(st)}")
        else:
            print(f"{name:<9} down  {mod.address(st)} (stopped; `scripts/stack start {name}`)")
            all_up = False
    return 0 if all_up else 3


def cmd_stop(args: argparse.Namespace) -> int:
    with locked():
        st = ServiceState.load(args.service)
        if not st.configured:
            raise ServiceError(f"{args.service} is not configured; run `scripts/stack up` first")
        SERVICES[args.service].stop(st, kill=args.kill)
        print(f"{args.service:<9} stopped ({'killed' if args.kill else 'clean'}); data kept")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    with locked():
        if not ServiceState.load(args.service).configured:
            raise ServiceError(f"{args.service} is not configured; run `scripts/stack up` first")
        failures = bring_up([args.service])
    for f in failures:
        print(f"stack: FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


def cmd_env(_: argparse.Namespace) -> int:
    if not ENV_FILE.exists():
        raise ServiceError("no .stack/env yet; run `scripts/stack up`")
    sys.stdout.write(ENV_FILE.read_text())
    return 0


def main() -> int:
    # Connection-refused noise from client libraries while a server boots is expected.
    logging.basicConfig(level=logging.CRITICAL)
    ap = argparse.ArgumentParser(prog="scripts/stack", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start every service (keeps running ones), write .stack/env")
    up.add_argument("--lease", type=int, help="(fixtures) pid of a session that uses the stack")
    up.set_defaults(func=cmd_up)
    rel = sub.add_parser("release", help="(fixtures) drop a lease; the last one stops the stack")
    rel.add_argument("lease", type=int)
    rel.set_defaults(func=cmd_release)
    sub.add_parser("down", help="stop everything, delete state").set_defaults(func=cmd_down)
    sub.add_parser("status", help="up/down per service").set_defaults(func=cmd_status)
    sub.add_parser("env", help="print .stack/env").set_defaults(func=cmd_env)
    for verb, func, hint in (
        ("stop", cmd_stop, "stop one service, keep its data and port"),
        ("start", cmd_start, "start one stopped service again"),
    ):
        p = sub.add_parser(verb, help=hint)
        p.add_argument("service", choices=list(SERVICES))
        if verb == "stop":
            p.add_argument("--kill", action="store_true", help="SIGKILL / crash-like stop")
        p.set_defaults(func=func)
    args = ap.parse_args()
    try:
        return int(args.func(args))
    except ServiceError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
