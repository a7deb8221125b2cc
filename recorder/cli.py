"""The `datarecorder` command: run, migrate, produce, verify, reset-progress, dlq, demo, operator.

Owns argument parsing, process signals and exit codes (recorder.core.shutdown.ExitCode), and
the hard stop that ends `run` at its shutdown deadline whatever still runs; everything else
lives in the modules it calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from recorder.core.kinds import TopicKind
from recorder.core.shutdown import ExitCode, Outcome, exit_code
from recorder.runtime import logs, supervise, telemetry
from recorder.runtime.settings import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    env_file = getattr(args, "env_file", None)
    if env_file is not None and not Path(env_file).exists():
        raise ConfigError(f"--env-file {env_file}: no such file")
    return load_settings(_env_file=env_file) if env_file else load_settings()


def _exit_now(code: int) -> NoReturn:
    """Leave at once (no cleanup, no waiting for threads): what the logs hold is flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _arm_backstop(seconds: float, outcome: Callable[[], Outcome]) -> threading.Timer:
    """The deadline holds even if a step ignores its cancellation or the event loop is stuck
    (a thread, a blocking call): when it passes, the process exits from this timer's thread
    with the code the outcome so far calls for. Losing nothing: progress is only recorded by
    committed writes, so a restart replays what was buffered."""

    def fire() -> None:
        code = int(exit_code(outcome()))
        telemetry.emit(telemetry.SHUTDOWN_BACKSTOP, seconds=seconds, exit_code=code)
        _exit_now(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


async def _run(settings: Settings) -> int:
    from recorder.app import build_recorder
    from recorder.http import serve

    recorder = build_recorder(settings)
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            telemetry.emit(
                telemetry.SHUTDOWN_REQUESTED,
                signal=signal.Signals(signum).name,
                deadline_seconds=settings.SHUTDOWN_TIMEOUT_SEC,
                state=recorder.state(),
            )
            recorder.stop()
        else:
            # Progress is only ever recorded in committed transactions / conditional writes,
            # so leaving now loses nothing that a restart will not replay.
            telemetry.emit(telemetry.SHUTDOWN_FORCED, signal=signal.Signals(signum).name)
            _exit_now(ExitCode.FORCED)

    async def backstop_on_stop() -> None:
        """Whatever stops the recorder (a signal, a failed task), the deadline holds."""
        await recorder.stopping()
        _arm_backstop(max(0.0, recorder.deadline() - time.monotonic()), recorder.outcome)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    backstop = asyncio.create_task(backstop_on_stop(), name="shutdown-backstop")
    runner = await serve(recorder, settings.HTTP_PORT) if settings.HTTP_PORT else None
    try:
        await recorder.run()
    finally:
        if runner is not None:
            await supervise.within("close_http", runner.cleanup(), recorder.deadline())
        backstop.cancel()  # armed by now if the recorder was stopped (the timer runs on)
    return int(exit_code(recorder.outcome()))


async def _migrate(settings: Settings) -> int:
    import asyncpg

    from recorder.sinks.timescale.migrate import migrate_explained

    conn = await asyncpg.connect(**settings.db_dsn_kwargs())
    try:
        result = await migrate_explained(conn)
    finally:
        await conn.close()
    applied = ", ".join(f"{m.version:04d}_{m.name}" for m in result.applied) or "none pending"
    print(f"mode: {result.mode.value} ({result.reason})")
    print(f"migrations applied: {applied}")
    return 0


def _lake(settings: Settings, args: argparse.Namespace) -> int:
    """`datarecorder lake compact / expire-snapshots / remove-orphans`."""
    if args.lake_command == "compact":
        from recorder.tools.lake_compact import compact

        print(asyncio.run(compact(settings, args.hour)))
        return 0
    from recorder.tools import lake_maintain

    if args.lake_command == "expire-snapshots":
        print(
            asyncio.run(lake_maintain.expire_snapshots(settings, args.older_than, args.retain_last))
        )
        return 0
    report, ok = asyncio.run(lake_maintain.remove_orphans(settings, args.older_than, args.dry_run))
    print(report)
    return 0 if ok else 1


async def _produce(settings: Settings, args: argparse.Namespace) -> int:
    from recorder.tools.produce import FeedSpec, produce

    sent = await produce(
        settings,
        counts={kind: getattr(args, f"{kind}s") for kind in TopicKind},
        rate=args.rate,
        duration=args.duration,
        spec=FeedSpec(symbols=args.symbols, seed=args.seed),
        invalid_ratio=args.invalid_ratio,
        progress=True,
    )
    print(json.dumps({"sent": sent}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="datarecorder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="record Kafka topics into TimescaleDB and S3 Parquet")
    p_run.add_argument("--env-file", help="read settings from this .env file (default: ./.env)")
    p_mig = sub.add_parser("migrate", help="apply the SQL migrations and exit")
    p_mig.add_argument("--env-file")
    p_prod = sub.add_parser("produce", help="send a synthetic market feed to the topics")
    p_prod.add_argument("--env-file")
    for kind in TopicKind:  # --ticks, --orderbooks, ...: one count per record kind
        p_prod.add_argument(
            f"--{kind}s",
            type=int,
            default=None,
            help=f"{kind} records to send (default: endless with --rate)",
        )
    p_prod.add_argument(
        "--rate", type=float, default=None, help="records per second (default: as fast as possible)"
    )
    p_prod.add_argument("--duration", type=float, default=None, help="seconds to run with --rate")
    p_prod.add_argument("--symbols", type=int, default=20)
    p_prod.add_argument("--seed", type=int, default=42)
    p_prod.add_argument(
        "--invalid-ratio", type=float, default=0.0, help="share of malformed records (tests)"
    )
    p_ver = sub.add_parser("verify", help="report missing and duplicated records per store")
    p_ver.add_argument("--env-file")
    p_ver.add_argument("--json", action="store_true", help="machine-readable report")
    p_reset = sub.add_parser(
        "reset-progress",
        help="move the sinks' stored progress of a topic's partitions (dry run by default)",
    )
    p_reset.add_argument("--env-file")
    p_reset.add_argument("--topic", required=True)
    p_reset.add_argument("--partition", type=int, default=None, help="default: every partition")
    where = p_reset.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", help="earliest, latest, or an offset (where recording resumes)")
    where.add_argument(
        "--to-time",
        help="an RFC 3339 time: each partition resumes at its first record stamped at or after "
        "it (its log end where there is none)",
    )
    where.add_argument(
        "--from-group",
        help="carry consumer group FROM_GROUP's lake progress over to KAFKA_GROUP_ID (a group "
        "rename; the database's progress is not scoped by group and stays as it is)",
    )
    p_reset.add_argument(
        "--apply",
        action="store_true",
        help="write the new progress (refused while a recorder owns a partition, and for "
        "moves that would record rows twice)",
    )
    p_dlq = sub.add_parser("dlq", help="dead letters: replay them once their cause is fixed")
    dlq_sub = p_dlq.add_subparsers(dest="dlq_command", required=True)
    p_replay = dlq_sub.add_parser(
        "replay",
        help="record the dead letters that pass today's rules, exactly once, up to the "
        "topic's current end (those that still fail stay, counted by reason)",
    )
    p_replay.add_argument("--env-file")
    p_replay.add_argument(
        "--topic", required=True, help="the dead-letter topic, e.g. market.tick.dlq"
    )
    p_replay.add_argument(
        "--reason",
        action="append",
        help="only dead letters of this reason label (x-recorder-error-reason; repeatable); "
        "the others are passed over for good",
    )
    p_replay.add_argument(
        "--since",
        help="only dead letters written at or after this RFC 3339 time; earlier ones are "
        "passed over for good",
    )
    p_lake = sub.add_parser("lake", help="the Iceberg tables of LAKE_FORMAT=iceberg")
    lake_sub = p_lake.add_subparsers(dest="lake_command", required=True)
    p_compact = lake_sub.add_parser(
        "compact",
        help="replace a closed hour's small data files by one file per table, atomically "
        "(safe while recorders commit)",
    )
    p_compact.add_argument("--env-file")
    p_compact.add_argument("--hour", required=True, help="the UTC hour, e.g. 2026-11-26T09")
    p_expire = lake_sub.add_parser(
        "expire-snapshots",
        help="expire old snapshots of both tables (never the current one, nor the one the "
        "recorder's progress is read from); deletes no file: see remove-orphans",
    )
    p_expire.add_argument("--env-file")
    p_expire.add_argument(
        "--older-than",
        default="7d",
        help="expire snapshots older than this (7d, 36h, 90m, 30s; default: 7d)",
    )
    p_expire.add_argument(
        "--retain-last",
        type=int,
        default=100,
        help="keep at least this many of the newest snapshots of the current branch, whatever "
        "their age (default: 100; at least 1)",
    )
    p_orphans = lake_sub.add_parser(
        "remove-orphans",
        help="delete the files under both tables' locations that no snapshot, manifest or "
        "metadata file references and that are older than --older-than",
    )
    p_orphans.add_argument("--env-file")
    p_orphans.add_argument(
        "--older-than",
        default="3d",
        help="only files last written before this (default: 3d). A running recorder uploads a "
        "commit's data files before it commits them: younger files may be a commit in flight, "
        "so keep this well above the longest commit (0 only while no recorder runs)",
    )
    p_orphans.add_argument(
        "--dry-run", action="store_true", help="list the orphan files, delete nothing"
    )
    p_demo = sub.add_parser("demo", help="embedded demo: broker, database, lake, feed and recorder")
    p_demo.add_argument(
        "--duration", type=float, default=60.0, help="seconds of feed (default: 60)"
    )
    p_demo.add_argument(
        "--rate", type=float, default=2000.0, help="records per second (default: 2000)"
    )
    p_demo.add_argument(
        "--keep", action="store_true", help="keep the lake, logs and database files"
    )
    p_demo.add_argument("--summary-json", help="also write the final summary to this JSON file")
    p_demo.add_argument(
        "--lake",
        choices=("parquet", "iceberg"),
        default="parquet",
        help="the cold path: Parquet files, or Iceberg tables in a SQL catalog on the demo's "
        "PostgreSQL (default: parquet)",
    )
    p_demo.add_argument(
        "--db",
        choices=("postgres", "timescaledb"),
        default="postgres",
        help="postgres (default) or timescaledb: native TimescaleDB, Apache edition "
        "(fetched once by scripts/timescaledb build)",
    )
    sub.add_parser("operator", help="the Kubernetes operator (render, run)", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command == "operator":
        from datarecorder_operator.cli import main as operator_main

        return operator_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        settings = _settings(args) if args.command != "demo" else None
    except ConfigError as exc:
        print(f"datarecorder: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if settings is not None:
        logs.configure(settings.LOG_LEVEL)
    if args.command == "run":
        assert settings is not None
        telemetry.emit(telemetry.SETTINGS, **settings.safe_dump())
        code = asyncio.run(_run(settings))
        # Everything is flushed, closed and logged: leave without the interpreter's
        # finalization, which takes about a second with pyarrow and the clients loaded and
        # would count against SHUTDOWN_TIMEOUT_SEC for nothing.
        _exit_now(code)
    if args.command == "migrate":
        assert settings is not None
        return asyncio.run(_migrate(settings))
    if args.command == "produce":
        assert settings is not None
        return asyncio.run(_produce(settings, args))
    if args.command == "verify":
        from recorder.tools.verify import main as verify_main

        assert settings is not None
        return int(asyncio.run(verify_main(settings, as_json=args.json)))
    if args.command == "reset-progress":
        from recorder.tools.reset_progress import reset_progress

        assert settings is not None
        try:
            report, done = asyncio.run(
                reset_progress(
                    settings,
                    args.topic,
                    args.partition,
                    args.to,
                    args.apply,
                    to_time=args.to_time,
                    from_group=args.from_group,
                )
            )
        except ConfigError as exc:
            print(f"datarecorder: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
        print(report)
        return 0 if done else 1  # refused, or changed since read: nothing for a script to trust
    if args.command == "dlq":
        from recorder.tools.dlq_replay import replay

        assert settings is not None
        try:
            report, finished = asyncio.run(replay(settings, args.topic, args.reason, args.since))
        except ConfigError as exc:
            print(f"datarecorder: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
        print(report)
        return 0 if finished else 1
    if args.command == "lake":
        assert settings is not None
        try:
            return _lake(settings, args)
        except ConfigError as exc:
            print(f"datarecorder: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
    if args.command == "demo":
        try:
            from recorder.tools.demo import main as demo_main
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("recorder.devstack"):
                raise
            # The image leaves the dev services out: a recorder pod never starts servers.
            print(
                "datarecorder demo: the embedded dev services (recorder.devstack) are not in "
                "this installation (the container image leaves them out); run the demo from "
                "a clone of the repository or a `pip install data-recorder`",
                file=sys.stderr,
            )
            return 2

        return int(
            demo_main(
                duration=args.duration,
                rate=args.rate,
                keep=args.keep,
                summary_json=args.summary_json,
                db=args.db,
                lake=args.lake,
            )
        )
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
