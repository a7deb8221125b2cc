"""The peers' pure pieces: config templates, the schema envelope, the table rows, CPU maths."""

from __future__ import annotations

import json
import os

import pytest

from bench.peers import cpu
from bench.peers.procs import HERE, render
from bench.peers.scenario import with_schema
from bench.peers.table import PeerRun, peer_rows
from bench.report import Results
from bench.report import render as render_table


def test_render_fills_placeholders_and_names_a_missing_one() -> None:
    assert render("a=${x} b=${y_z}", {"x": 1, "y_z": "two"}) == "a=1 b=two"
    with pytest.raises(KeyError, match=r"\$\{missing\}"):
        render("a=${missing}", {})


@pytest.mark.parametrize("name", ["worker.properties", "jdbc-sink.properties"])
def test_connect_templates_render_with_the_values_the_bench_passes(name: str) -> None:
    values = {
        k: "v"
        for k in (
            "brokers", "state", "plugins", "rest_port", "name", "topic", "database",
            "pg_host", "pg_port", "pg_user", "pg_password",
        )
    }  # fmt: skip
    text = render((HERE / "connect" / name).read_text(), values)
    assert "${" not in text.replace("${sys:", "")


def test_schema_envelope_keeps_the_payload_bytes_and_types_the_event_time() -> None:
    value = b'{"symbol":"S1","price":1.5,"volume":3,"change":null,"change_rate":0.1,"timestamp":7}'
    doc = json.loads(with_schema(value))
    assert doc["payload"] == json.loads(value)
    fields = {f["field"]: f for f in doc["schema"]["fields"]}
    assert set(fields) == set(doc["payload"])
    assert fields["timestamp"]["name"] == "io.debezium.time.NanoTimestamp"
    assert fields["change"]["optional"] and not fields["price"]["optional"]


def test_peer_rows_give_rate_ratio_and_cpu_per_row() -> None:
    runs = [
        PeerRun("recorder", "PostgreSQL", 100_000, 2.0, 0.8, 0.3, check="reference"),
        PeerRun("Benthos", "PostgreSQL", 100_000, 8.0, 4.0, None, check="same rows"),
    ]
    (rec, peer) = peer_rows(runs)
    assert rec[1] == "50,000 rec/s" and rec[2] == ""
    assert "process 8.0 µs, PostgreSQL 3.0 µs" in rec[3]
    assert peer[1] == "12,500 rec/s" and peer[2] == "0.25x recorder"
    assert "process 40.0 µs, PostgreSQL n/a" in peer[3] and "same rows" in peer[3]


def test_a_lake_run_the_timer_dominates_shows_no_rate_and_no_ratio() -> None:
    rec = PeerRun("recorder", "Parquet/S3", 100_000, 7.0, 0.8, None, timed=True)
    rec.rate_how = "not measured: the flush timer (5 s) is 71% of the 7.0 s drain"
    peer = PeerRun("Benthos", "Parquet/S3", 100_000, 9.0, 1.0, None, timed=True, steady=20_000.0)
    peer.rate_how = "steady state: 10%→90% of records recorded in 4.0 s"
    (r1, r2) = peer_rows([rec, peer])
    assert r1[1] == "—" and "rate: not measured: the flush timer" in r1[3]
    assert r2[1] == "20,000 rec/s" and r2[2] == "" and "rate: steady state" in r2[3]


def test_a_peer_is_compared_over_the_recorders_steady_window() -> None:
    rec = PeerRun("recorder", "Parquet/S3", 1000, 3.0, 0.1, None, timed=True, steady=1000.0)
    rec.window = (0.1, 0.9)
    # Benthos: 250 rows/s between 10 % and 90 %, then a long tail: whole rate 1000/5 = 200.
    peer = PeerRun("Benthos", "Parquet/S3", 1000, 5.0, 0.1, None, timed=True, steady=200.0)
    peer.line = [(0.0, 0.0), (0.4, 100.0), (3.6, 900.0), (5.0, 1000.0)]
    (_, row) = peer_rows([rec, peer])
    assert row[1] == "200 rec/s" and row[2] == "0.25x recorder (10%→90%)"


def test_benchmark_table_has_the_peer_rows_or_says_why_not() -> None:
    r = Results(mode="quick", ticks=10, books=1)
    r.skipped["peers"] = "not in this plan"
    assert "not in this plan" in render_table(r)
    r.peers = [PeerRun("recorder", "PostgreSQL", 10, 1.0, 0.1, 0.1, check="reference")]
    assert "Recorder → PostgreSQL, ticks only" in render_table(r)


def test_process_cpu_counts_this_process_and_nothing_for_a_gone_one() -> None:
    before = cpu.process_cpu(os.getpid())
    sum(i * i for i in range(300_000))  # burn some CPU
    assert cpu.process_cpu(os.getpid()) > before
    assert cpu.process_cpu(2**22 + 12345) == 0.0
