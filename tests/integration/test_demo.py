"""`datarecorder demo` end to end: real Kafka, embedded PostgreSQL, local lake, real recorder.

Runs the command as a user would (a subprocess, nothing started beforehand) and checks that
its summary is consistent, that Ctrl-C ends it cleanly, and that it leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROOT_LINE = re.compile(r"starting Apache Kafka and PostgreSQL under (\S+)")
PROGRESS_LINE = re.compile(r"^\s*\d+s  kafka\s+[\d,]+", re.MULTILINE)


def _processes_using(root: str) -> list[str]:
    """Live processes whose command line or working directory points into `root`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if root in cmd or cwd.startswith(root):
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIMESCALEDB_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "recorder.cli", "demo", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _check_summary(summary: dict[str, Any], output: str) -> None:
    produced = summary["produced"]
    ticks, books = produced["market.tick"], produced["market.orderbook"]
    assert ticks > 0 and books > 0, output
    # The feed is 10 ticks : 1 order book.
    assert 8 * books <= ticks <= 12 * books, produced
    # After the final flush both stores hold exactly what was produced (no invalid records).
    assert summary["database"] == {
        "tick_data": ticks,
        "orderbook": books,
        "tick_1min_bars": summary["database"]["tick_1min_bars"],
    }
    assert summary["database"]["tick_1min_bars"] > 0
    assert summary["parquet"]["tick_rows"] == ticks
    assert summary["parquet"]["orderbook_rows"] == books
    assert summary["parquet"]["files"] >= 2
    assert summary["dead_letters"] == 0
    assert summary["verify"]["ok"] is True, summary["verify"]
    assert {s["store"] for s in summary["verify"]["stores"]} >= {
        "timescaledb.tick_data",
        "timescaledb.orderbook",
        "parquet.tick",
        "parquet.orderbook",
    }
    assert summary["problems"] == []


def _check_output_and_cleanup(output: str) -> None:
    match = ROOT_LINE.search(output)
    assert match, output
    root = match.group(1)
    assert len(PROGRESS_LINE.findall(output)) >= 3, output
    for heading in (
        "OK: every record exactly once in every store",
        "-- latest ticks of 005930",
        "FROM tick_1min",
        "(bids->0->>'price')::float8 AS best_bid",
        "hive_partitioning = true",
        "demo stopped; nothing left running",
    ):
        assert heading in output, f"{heading!r} missing from:\n{output}"
    # The DuckDB result table has one row per symbol, read from the lake's Parquet files.
    assert re.search(r"^005930\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s*$", output, re.MULTILINE), output
    assert not Path(root).exists(), f"{root} was not removed"
    # Children may take a moment to be reaped by init after their group is killed.
    deadline = time.monotonic() + 10
    while (left := _processes_using(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"


def test_demo_runs_for_its_duration_and_every_store_agrees(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    proc = _demo(
        tmp_path, "--duration", "20", "--rate", "2000", "--summary-json", str(summary_file)
    )
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    summary = json.loads(summary_file.read_text())
    _check_summary(summary, output)
    assert 17 <= summary["feed_seconds"] <= 30, summary
    # The feed is paced: about --rate records per second, not as fast as possible.
    total = sum(summary["produced"].values())
    assert 0.6 * 2000 * 20 <= total <= 1.1 * 2000 * 20, total
    _check_output_and_cleanup(output)


def test_ctrl_c_stops_the_feed_and_still_flushes_verifies_and_cleans_up(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    proc = _demo(tmp_path, "--duration", "300", "--summary-json", str(summary_file))
    assert proc.stdout is not None
    lines: list[str] = []
    progress = 0
    for line in proc.stdout:
        lines.append(line)
        if PROGRESS_LINE.match(line):
            progress += 1
            if progress == 6:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
                break
    rest, _ = proc.communicate(timeout=300)
    output = "".join(lines) + rest
    assert progress == 6, output
    assert proc.returncode == 0, output
    assert "Ctrl-C: stopping the feed" in output
    summary = json.loads(summary_file.read_text())
    _check_summary(summary, output)
    assert summary["feed_seconds"] < 60, summary
    _check_output_and_cleanup(output)


def test_demo_on_native_timescaledb(tmp_path: Path) -> None:
    """`--db timescaledb`: the same demo on TimescaleDB's Apache edition (hypertables)."""
    summary_file = tmp_path / "summary.json"
    proc = _demo(
        tmp_path,
        "--db",
        "timescaledb",
        "--duration",
        "8",
        "--rate",
        "1000",
        "--summary-json",
        str(summary_file),
    )
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    assert "(TimescaleDB 2.19 Apache edition, Debian trixie, TimescaleDB Apache mode)" in output
    _check_summary(json.loads(summary_file.read_text()), output)
    _check_output_and_cleanup(output)


def test_demo_with_an_iceberg_lake(tmp_path: Path) -> None:
    """`--lake iceberg`: the cold path commits to Iceberg tables in a SQL catalog on the demo's
    PostgreSQL; pyiceberg reads them back (DuckDB over its Arrow scan) and verify finds every
    record exactly once in them."""
    summary_file = tmp_path / "summary.json"
    proc = _demo(
        tmp_path, "--lake", "iceberg", "--duration", "8", "--rate", "1000",
        "--summary-json", str(summary_file),
    )  # fmt: skip
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    summary = json.loads(summary_file.read_text())
    ticks, books = summary["produced"]["market.tick"], summary["produced"]["market.orderbook"]
    assert ticks > 0 and books > 0, output
    # The lake's counts are the tables' committed totals (the current snapshots' summaries).
    assert (summary["parquet"]["tick_rows"], summary["parquet"]["orderbook_rows"]) == (ticks, books)
    stores = {s["store"]: s for s in summary["verify"]["stores"]}
    for store, expected in (("iceberg.tick", ticks), ("iceberg.orderbook", books)):
        assert stores[store]["found"] == expected, stores[store]
        assert stores[store]["missing"] == stores[store]["duplicated"] == 0, stores[store]
    assert summary["verify"]["ok"] is True and summary["problems"] == [], summary
    assert "scanned by pyiceberg, queried by DuckDB" in output, output
    # One row per symbol read back from the table, and the snapshots carrying the progress.
    assert re.search(r"^005930\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s*$", output, re.MULTILINE), output
    assert '{"market.tick/0": ' in output, output
    assert "demo stopped; nothing left running" in output
