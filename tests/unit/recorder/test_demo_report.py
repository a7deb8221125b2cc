"""The demo's pure parts: metrics parsing, rates, tables and the consistency check."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from recorder.devstack.services import kafka_properties
from recorder.tools.demo_report import (
    Snapshot,
    consistency,
    lag_by_sink,
    progress_line,
    rate,
    table,
)

METRICS = """\
# HELP datarecorder_lag_records Sum of lag.
# TYPE datarecorder_lag_records gauge
datarecorder_lag_records{sink="timescaledb"} 652.0
datarecorder_lag_records{sink="s3"} 6849.0
# HELP datarecorder_buffer_records Buffered.
# TYPE datarecorder_buffer_records gauge
datarecorder_buffer_records{sink="s3"} 12.0
"""

GOOD: dict[str, Any] = {
    "produced": {"market.tick": 100, "market.orderbook": 10},
    "database": {"tick_data": 100, "orderbook": 10, "tick_1min_bars": 3},
    "parquet": {"files": 4, "tick_rows": 100, "orderbook_rows": 10},
    "verify": {"ok": True},
}


def test_lag_by_sink_reads_only_the_lag_gauge() -> None:
    assert lag_by_sink(METRICS) == {"timescaledb": 652.0, "s3": 6849.0}
    assert lag_by_sink("") == {}


def test_rate_is_change_per_second_and_zero_without_a_previous_snapshot() -> None:
    a = Snapshot(1.0, 1000, 900, 90, 0, 0)
    b = Snapshot(3.0, 5000, 4500, 450, 2, 3000)
    assert rate(None, b, "produced") == 0.0
    assert rate(a, b, "produced") == 2000.0
    assert rate(a, b, "db_rows") == (4950 - 990) / 2
    assert rate(b, b, "produced") == 0.0


def test_progress_line_names_every_store_and_the_lag() -> None:
    a = Snapshot(1.0, 1000, 900, 90, 0, 0)
    b = Snapshot(2.0, 3000, 2700, 270, 5, 2500, {"timescaledb": 652.0, "s3": 6849.0})
    line = progress_line(a, b)
    for part in ("kafka    3,000", "(2,000/s)", "tick_data    2,700", "orderbook     270"):
        assert part in line, line
    assert "parquet   5 files    2,500 rows" in line
    assert line.endswith("lag parquet 6,849 db 652")


def test_table_pads_columns_and_formats_counts_only_when_asked() -> None:
    out = table(("year", "n"), [(2026, 12345), (None, 1.5)])
    assert out.splitlines() == ["year  n", "----  -----", "2026  12345", "NULL  1.50"]
    assert table(("n",), [(12345,)], counts=True).splitlines()[-1] == "12,345"


def test_consistency_accepts_agreeing_stores() -> None:
    assert consistency(GOOD) == []


def test_consistency_names_each_disagreement() -> None:
    bad = copy.deepcopy(GOOD)
    bad["database"]["orderbook"] = 9
    bad["parquet"]["tick_rows"] = 101
    bad["verify"]["ok"] = False
    assert consistency(bad) == [
        "orderbook rows: 9 stored, 10 produced",
        "Parquet tick rows: 101 stored, 100 produced",
        "datarecorder verify found missing or duplicated records",
    ]
    empty = copy.deepcopy(GOOD)
    empty["produced"] = {"market.tick": 0, "market.orderbook": 0}
    assert "nothing was produced" in consistency(empty)


def test_kafka_properties_stay_on_loopback_with_one_replica() -> None:
    props = kafka_properties(Path("/d"), 9092, 9093)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == "/d"


def test_remove_abandoned_deletes_only_dirs_of_dead_demos(tmp_path: Path) -> None:
    import os
    import subprocess

    from recorder.tools.demo import DIR_PREFIX, remove_abandoned

    gone = subprocess.Popen(["true"])  # a pid that has exited
    gone.wait()
    abandoned = tmp_path / f"{DIR_PREFIX}old"
    running = tmp_path / f"{DIR_PREFIX}live"
    foreign = tmp_path / f"{DIR_PREFIX}nopid"
    for d in (abandoned, running, foreign):
        d.mkdir()
    (abandoned / "demo.pid").write_text(str(gone.pid))
    (running / "demo.pid").write_text(str(os.getpid()))
    assert remove_abandoned(tmp_path) == [abandoned]
    assert not abandoned.exists() and running.exists() and foreign.exists()
