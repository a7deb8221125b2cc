"""`datarecorder demo`: the whole system on one machine, with nothing running beforehand.

Owns the demo's sequence: start Kafka and PostgreSQL (recorder/devstack/services.py), run `datarecorder run`
as a subprocess with a local Parquet lake, feed it, show progress each second, then flush,
verify, query both stores and stop everything it started.

Over 400 lines: a script of sequential steps and their printed report, read top to bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from recorder.devstack import services
from recorder.devstack.procs import pid_alive
from recorder.devstack.services import Child, Database, ServiceError
from recorder.kafka.options import client_options
from recorder.runtime.settings import Settings
from recorder.tools.demo_lake import DemoLake, demo_lake
from recorder.tools.demo_report import Snapshot, consistency, lag_by_sink, progress_line, table
from recorder.tools.produce import FeedSpec, produce, symbols
from recorder.tools.verify import verify

TOPICS = ("market.tick", "market.orderbook")
PARTITIONS = 4
SYMBOL = symbols(1)[0]
DRAIN_TIMEOUT_SEC = 60.0
DIR_PREFIX = "datarecorder-demo-"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def demo_settings(
    bootstrap: str, db: Database, lake: Path, http_port: int, lake_format: str = "parquet"
) -> dict[str, str]:
    """The recorder's environment for the demo (everything else keeps its default)."""
    return {
        "LAKE_FORMAT": lake_format,
        "KAFKA_BROKERS": bootstrap,
        "KAFKA_GROUP_ID": "datarecorder-demo",
        "KAFKA_TOPICS": ",".join(TOPICS),
        **db.env(),
        "DB_WRITE_ENABLED": "true",
        "S3_WRITE_ENABLED": "true",
        "LOCAL_LAKE_DIR": str(lake),
        # Files every 5 s instead of every minute, so the lake fills while you watch.
        "S3_BATCH_TIMEOUT_SEC": "5",
        "HTTP_PORT": str(http_port),
        "LOG_LEVEL": "INFO",
    }


def isolated_settings(values: dict[str, str]) -> Settings:
    """Settings from `values` and defaults only: the user's environment and .env (which may
    point at a production cluster) must not leak into the demo."""
    base: dict[str, Any] = {name: f.default for name, f in Settings.model_fields.items()}
    return Settings(_env_file=None, **(base | values))


def recorder_environ(values: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in Settings.model_fields and not k.startswith("AWS_")
    }
    return env | values


class Demo:
    def __init__(
        self,
        root: Path,
        duration: float,
        rate: float,
        db: str = "postgres",
        lake_format: str = "parquet",
    ) -> None:
        self.root = root
        self.db = db
        self.lake_format = lake_format
        self.duration = duration
        self.rate = rate
        self.children: list[Child] = []
        self.stop_requested = asyncio.Event()
        self.feeding = False

    # --- orchestration ----------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        say(f"datarecorder demo: starting Apache Kafka and PostgreSQL under {self.root}")
        kafka, bootstrap = services.start_kafka(self.root, say)
        self.children.append(kafka)
        pg, db, origin = services.start_postgres(self.root, timescaledb=self.db == "timescaledb")
        self.children.append(pg)
        await asyncio.gather(
            services.kafka_ready(kafka, bootstrap), services.postgres_ready(pg, db)
        )
        say(f"  kafka      {bootstrap} (Apache Kafka {services.KAFKA_VERSION}, KRaft, 1 node)")
        mode = "TimescaleDB Apache mode" if self.db == "timescaledb" else "plain PostgreSQL mode"
        say(f"  postgres   {db.host}:{db.port}/{db.database} ({origin}, {mode})")
        await self._create_topics(bootstrap)

        lake_dir = self.root / "lake"
        http_port = services.free_port()
        values = demo_settings(bootstrap, db, lake_dir, http_port, self.lake_format)
        settings = isolated_settings(values)
        recorder = services.spawn(
            "recorder",
            [sys.executable, "-m", "recorder.cli", "run"],
            self.root / "recorder.log",
            env=recorder_environ(values),
            cwd=self.root,  # not the caller's directory: its .env must not apply
            death_signal=signal.SIGTERM,
        )
        self.children.append(recorder)
        metrics_url = f"http://127.0.0.1:{http_port}"
        await self._wait_recorder_ready(recorder, metrics_url)
        say(f"  recorder   pid {recorder.pid}, {metrics_url}/metrics, log {recorder.log_path}")
        say(f"  lake       {lake_dir / settings.S3_PREFIX}")
        startup = time.monotonic() - t0
        say(f"ready in {startup:.1f}s")
        say()
        say(
            f"feeding {self.rate:,.0f} records/s (10 ticks : 1 order book, 20 symbols) for "
            f"{self.duration:.0f}s; Ctrl-C stops early"
        )

        lake = demo_lake(settings, lake_dir / settings.S3_PREFIX)
        db_conn = await asyncpg.connect(
            host=db.host, port=db.port, user=db.user, password=db.password, database=db.database
        )
        watcher = AIOKafkaConsumer(enable_auto_commit=False, **client_options(settings))
        await watcher.start()
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            tps = [TopicPartition(t, p) for t in TOPICS for p in range(PARTITIONS)]
            snap = await self._snapshot(0.0, watcher, tps, db_conn, lake, http, metrics_url)
            fed_at = time.monotonic()
            self.feeding = True
            feed = asyncio.create_task(
                produce(
                    settings,
                    ticks=None,
                    orderbooks=None,
                    rate=self.rate,
                    duration=self.duration,
                    spec=FeedSpec(),
                )
            )
            prev = snap
            while not feed.done() and not self.stop_requested.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_requested.wait(), 1.0)
                self._check(recorder)
                snap = await self._snapshot(
                    time.monotonic() - fed_at, watcher, tps, db_conn, lake, http, metrics_url
                )
                say(progress_line(prev, snap))
                prev = snap
            if not feed.done():
                feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
            fed_for = time.monotonic() - fed_at
            self.feeding = False

            say("feed stopped; waiting for the recorder to store what is left in Kafka …")
            deadline = time.monotonic() + DRAIN_TIMEOUT_SEC
            while time.monotonic() < deadline:
                self._check(recorder)
                snap = await self._snapshot(
                    time.monotonic() - fed_at, watcher, tps, db_conn, lake, http, metrics_url
                )
                if snap.db_rows >= snap.produced:
                    break
                say(progress_line(prev, snap))
                prev = snap
                await asyncio.sleep(1.0)
            say("stopping the recorder (SIGTERM: it flushes every buffer, then commits) …")
            code = recorder.stop(signal.SIGTERM, timeout=settings.SHUTDOWN_TIMEOUT_SEC + 15)
            if code != 0:
                raise ServiceError(
                    f"the recorder exited with {code}:\n{services.tail(recorder.log_path)}"
                )
            final = await self._snapshot(
                time.monotonic() - fed_at, watcher, tps, db_conn, lake, http, None
            )
            say(progress_line(prev, final))
            return await self._summary(
                settings, watcher, db_conn, lake, final, startup=startup, fed_for=fed_for
            )
        finally:
            await http.close()
            await watcher.stop()
            await db_conn.close()

    def request_stop(self, main: asyncio.Task[Any]) -> None:
        """First Ctrl-C while feeding: stop the feed and finish normally. Otherwise: abort."""
        if self.feeding and not self.stop_requested.is_set():
            say("\nCtrl-C: stopping the feed (press again to abort without the summary)")
            self.stop_requested.set()
        else:
            main.cancel()

    # --- steps --------------------------------------------------------------------------
    async def _create_topics(self, bootstrap: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in TOPICS]
            )
        finally:
            await admin.close()

    async def _wait_recorder_ready(self, recorder: Child, url: str, limit_s: float = 90) -> None:
        deadline = time.monotonic() + limit_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                self._check(recorder)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url + "/ready") as res:
                        if res.status == 200:
                            return
                await asyncio.sleep(0.25)
        raise ServiceError(
            f"the recorder was not ready in {limit_s:.0f}s:\n{services.tail(recorder.log_path)}"
        )

    def _check(self, recorder: Child) -> None:
        if not recorder.alive():
            raise ServiceError(
                f"the recorder exited ({recorder.proc.returncode}):\n"
                f"{services.tail(recorder.log_path)}"
            )

    async def _snapshot(
        self,
        at: float,
        watcher: AIOKafkaConsumer,
        tps: list[TopicPartition],
        conn: asyncpg.Connection,
        lake: DemoLake,
        http: aiohttp.ClientSession,
        metrics_url: str | None,
    ) -> Snapshot:
        ends = await watcher.end_offsets(tps)
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM tick_data) AS ticks, "
            "(SELECT count(*) FROM orderbook) AS books"
        )
        files = await asyncio.to_thread(lake.scan)
        lag: dict[str, float] = {}
        if metrics_url is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(metrics_url + "/metrics") as res:
                    lag = lag_by_sink(await res.text())
        return Snapshot(
            at=at,
            produced=sum(ends.values()),
            db_ticks=counts["ticks"],
            db_books=counts["books"],
            parquet_files=sum(f for f, _ in files.values()),
            parquet_rows=sum(r for _, r in files.values()),
            lag=lag,
        )

    async def _summary(
        self,
        settings: Settings,
        watcher: AIOKafkaConsumer,
        conn: asyncpg.Connection,
        lake: DemoLake,
        final: Snapshot,
        *,
        startup: float,
        fed_for: float,
    ) -> dict[str, Any]:
        produced = {
            t: sum(
                (
                    await watcher.end_offsets([TopicPartition(t, p) for p in range(PARTITIONS)])
                ).values()
            )
            for t in TOPICS
        }
        dlq = sum(
            (
                await watcher.end_offsets(
                    [TopicPartition(settings.dlq_topic(t), 0) for t in TOPICS]
                )
            ).values()
        )
        files = await asyncio.to_thread(lake.scan)
        bars = await conn.fetchval("SELECT count(*) FROM tick_1min")
        report = await verify(settings)
        summary: dict[str, Any] = {
            "startup_seconds": round(startup, 1),
            "feed_seconds": round(fed_for, 1),
            "produced": produced,
            "database": {
                "tick_data": final.db_ticks,
                "orderbook": final.db_books,
                "tick_1min_bars": bars,
            },
            "parquet": {
                "files": files["tick"][0] + files["orderbook"][0],
                "tick_rows": files["tick"][1],
                "orderbook_rows": files["orderbook"][1],
            },
            "dead_letters": dlq,
            "verify": report.as_dict(),
        }
        summary["problems"] = consistency(summary)

        total = sum(produced.values())
        say()
        say("=" * 78)
        say(
            f"summary: {total:,} records produced in {fed_for:.1f}s ({total / max(fed_for, 1e-9):,.0f}/s)"
        )
        say(
            table(
                ("store", "ticks", "order books", "files"),
                [
                    ("kafka (produced)", produced["market.tick"], produced["market.orderbook"], ""),
                    ("postgresql", final.db_ticks, final.db_books, ""),
                    (
                        lake.label,
                        files["tick"][1],
                        files["orderbook"][1],
                        summary["parquet"]["files"],
                    ),
                ],
                counts=True,
            )
        )
        say(f"tick_1min bars: {bars:,}   dead letters: {dlq:,}")
        say()
        say("datarecorder verify (each record compared by content, per store):")
        say(
            table(
                ("store", "expected", "found", "missing", "duplicated", "unexpected"),
                [
                    (s.store, s.expected, s.found, s.missing, s.duplicated, s.unexpected)
                    for s in report.stores
                ],
                counts=True,
            )
        )
        say("OK: every record exactly once in every store" if report.ok else "FAILED: see above")
        await self._queries(conn, lake)
        for problem in summary["problems"]:
            say(f"PROBLEM: {problem}")
        return summary

    async def _queries(self, conn: asyncpg.Connection, lake: DemoLake) -> None:
        queries = [
            (
                f"latest ticks of {SYMBOL}",
                "SELECT time, symbol, price, volume, change, change_rate FROM tick_data\n"
                f"WHERE symbol = '{SYMBOL}' ORDER BY time DESC LIMIT 5",
            ),
            (
                f"1-minute OHLCV of {SYMBOL} (rollup view tick_1min)",
                "SELECT bucket, open, high, low, close, volume FROM tick_1min\n"
                f"WHERE symbol = '{SYMBOL}' ORDER BY bucket DESC LIMIT 5",
            ),
            (
                f"best bid / ask of {SYMBOL} (order book levels are JSONB)",
                "SELECT time, (bids->0->>'price')::float8 AS best_bid,\n"
                "       (asks->0->>'price')::float8 AS best_ask FROM orderbook\n"
                f"WHERE symbol = '{SYMBOL}' ORDER BY time DESC LIMIT 3",
            ),
        ]
        for title, sql in queries:
            rows = await conn.fetch(sql)
            say()
            say(f"-- {title}")
            say(sql + ";")
            say(
                table(
                    list(rows[0].keys()) if rows else ["(no rows)"],
                    [tuple(r.values()) for r in rows],
                )
            )
        try:
            import duckdb
        except ImportError:
            say(
                "\n(duckdb is not installed: `pip install -e '.[demo]'` adds it for the lake query)"
            )
            return
        for title, sql, tables in await asyncio.to_thread(lake.queries):
            con = duckdb.connect()
            try:
                for name, arrow in tables.items():
                    con.register(name, arrow)
                cur = con.execute(sql)
                columns = [d[0] for d in cur.description]
                rows = cur.fetchall()
            finally:
                con.close()
            say()
            say(f"-- {title}")
            say(sql + ";")
            say(table(columns, rows))


def remove_abandoned(tmp: Path) -> list[Path]:
    """Remove the directories of demos that were killed (SIGKILL leaves no chance to clean
    up; their processes died with them): those whose recorded demo process is gone."""
    removed = []
    for path in tmp.glob(DIR_PREFIX + "*"):
        try:
            pid = int((path / "demo.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _stop_all(children: list[Child]) -> None:
    """Stop in reverse start order: recorder (graceful), then PostgreSQL, then Kafka."""
    for child in reversed(children):
        if child.name == "postgres":
            child.stop(signal.SIGINT, timeout=20)  # fast shutdown
        else:
            child.stop(signal.SIGTERM, timeout=20)


def main(
    duration: float,
    rate: float,
    *,
    keep: bool = False,
    summary_json: str | None = None,
    db: str = "postgres",
    lake: str = "parquet",
) -> int:
    """Run the demo; 0 when every store agrees with what was produced."""
    if duration <= 0 or rate <= 0:
        print("datarecorder demo: --duration and --rate must be > 0", file=sys.stderr)
        return 2
    # aiokafka logs every refused connection while the broker boots; the demo checks itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    remove_abandoned(Path(tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    root.chmod(0o711)  # PostgreSQL runs as an unprivileged user when we are root
    (root / "demo.pid").write_text(str(os.getpid()))
    demo = Demo(root, duration, rate, db, lake)
    summary: dict[str, Any] | None = None
    code = 1

    async def run() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stop: Callable[[], None] = lambda: demo.request_stop(task)  # noqa: E731
        loop.add_signal_handler(signal.SIGINT, stop)
        loop.add_signal_handler(signal.SIGTERM, stop)
        return await demo.run()

    try:
        summary = asyncio.run(run())
        code = 0 if not summary["problems"] else 1
    except ServiceError as exc:
        print(f"datarecorder demo: {exc}", file=sys.stderr)
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("datarecorder demo: aborted", file=sys.stderr)
        code = 130
    finally:
        say("stopping PostgreSQL and Kafka …")
        _stop_all(demo.children)
        if summary is not None and summary_json:
            Path(summary_json).write_text(json.dumps(summary, indent=2, default=str))
        if keep:
            say(f"kept {root} (lake, logs, database files)")
        else:
            shutil.rmtree(root, ignore_errors=True)
        say("demo stopped; nothing left running")
    return code
