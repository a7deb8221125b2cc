"""The benchmark table: percentiles, ratio lines, rows for missing figures, and the rate
taken from a progress curve (pure)."""

from __future__ import annotations

import math

import pytest

from bench.pipe import piece_ends, released
from bench.rates import crossing, rate_between
from bench.report import (
    Rate,
    Results,
    drain_rate,
    limit,
    percentile,
    percentiles,
    render,
    same_way,
    tail_bound,
)


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    p = percentiles([5.0, 1.0, 3.0])
    assert (p.count, p.p50, p.max) == (3, 3.0, 5.0)
    assert math.isnan(percentile([], 50))


def test_one_stage_ratio_uses_the_lower_ceiling() -> None:
    r = Results(mode="quick", ticks=10, books=1, recorder_db=70.0, copy_ceiling=200.0)
    r.fetch_ceiling, r.naive = 100.0, 7.0
    lines = render(r).splitlines()
    assert "recorder (both sinks, → PostgreSQL) / one-stage ceiling min(COPY, fetch): 0.70" in lines
    assert "recorder / naive: 10.0x" in lines


def test_pipe_ratios_are_the_headline_and_use_the_slower_store_with_both_sinks() -> None:
    r = Results(mode="full", ticks=10, books=1, recorder_db=80.0, recorder_s3=60.0)
    r.recorder_db_only, r.pipe_hot, r.pipe_both = 90.0, 100.0, 120.0
    lines = render(r).splitlines()
    at = lines.index("recorder / pipe, hot path alone: 0.90")
    assert lines[at + 1] == "recorder / pipe, both sinks: 0.50"
    assert lines[at + 2].startswith("recorder (both sinks, → PostgreSQL) / one-stage")


def test_a_store_not_measured_leaves_the_both_sinks_ratio_out() -> None:
    r = Results(mode="quick", ticks=10, books=1, recorder_db=80.0, pipe_both=100.0)
    r.recorder_s3_how = "not measured: the flush timer is 250% of the drain"
    text = render(r)
    assert "recorder / pipe, both sinks: n/a" in text
    assert "not measured: the flush timer is 250% of the drain" in text
    assert "0.80 of pipe" not in text


def test_missing_figures_say_so_instead_of_failing() -> None:
    r = Results(mode="quick", ticks=10, books=1)
    r.skipped["scaling"] = "full run only"
    text = render(r)
    assert "recorder / pipe, hot path alone: n/a" in text
    assert "one-stage ceiling min(COPY, fetch): n/a" in text
    assert "full run only" in text


def test_every_row_has_the_same_columns_and_says_what_limits_the_drains() -> None:
    r = Results(mode="full", ticks=10, books=1, recorder_db=80.0, recorder_db_only=90.0)
    r.cpu_us["hot path"], r.cores["hot path"] = 4.0, 0.95
    r.cores["both sinks"], r.machine_cores["both sinks"] = 0.5, 1.95
    r.busy_window["both sinks"] = "over the rate's window (steady state 10%→90% of its records)"
    r.scaling["DB_WRITE_WORKERS=1"] = 50.0
    r.scaling_how |= {"DB_WRITE_WORKERS=1": "whole drain", "2 processes x 4 writers": "not m"}
    table = [line for line in render(r).splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1
    text = "\n".join(table)
    assert "limit: its own CPU, one event loop (process 0.95 cores busy, from its first" in text
    assert "limit: the shared cores, all busy with it, the servers and other jobs" in text
    # Busy figures taken while records flowed say so (the flush timers' idle tail is apart).
    assert "machine 1.95 of 2, over the rate's window (steady state 10%→90%" in text
    assert "4.00 µs" in text and "≈ 250,000 rec/s per core" in text
    # A scaling run that could not be measured is listed, without a rate.
    row = next(line for line in table if "2 processes x 4 writers" in line)
    assert "| —" in row and "not m" in row


def test_limit_says_what_is_known() -> None:
    assert "not known" in limit(None)
    assert "own CPU" in limit(1.3)
    assert "the machine's was not measured" in limit(0.4)
    assert "shared cores" in limit(0.4, 1.9, 2)
    assert "neither its CPU nor the machine's was saturated" in limit(0.4, 1.2, 2)


# --- the rate from the progress curve -----------------------------------------------------
def test_crossing_interpolates_between_samples() -> None:
    line = [(0.0, 0.0), (1.0, 100.0), (2.0, 100.0), (3.0, 300.0)]
    assert crossing(line, 50) == 0.5
    assert crossing(line, 100) == 1.0
    assert crossing(line, 200) == 2.5
    assert crossing(line, 301) is None
    assert crossing([(0.7, 500.0)], 10) == 0.7  # reached before the first sample


def test_tail_bound_is_a_partial_batch_per_partition_capped_by_the_topic() -> None:
    assert tail_bound([1_000_000], 10, 1000) == pytest.approx(9_990 / 1_000_000)
    assert tail_bound([100_000, 10_000], 12, 10_000) == 1.0  # every record may wait
    assert tail_bound([], 12, 10) == 1.0


def test_a_drain_much_longer_than_the_timer_is_timed_whole() -> None:
    rate = drain_rate(1000, 100.0, [(0.0, 0.0), (100.0, 1000.0)], 5.0, 0.01)
    assert rate.value == 10.0 and rate.how.startswith("whole drain")


def test_a_drain_near_the_timer_takes_the_steady_state_from_the_curve() -> None:
    # 1,000 records/s for 9 s, then the last 10 % wait a 5 s timer: 14 s in all.
    line = [(t / 10, min(1000.0 * t / 10, 9000.0)) for t in range(0, 90)]
    line += [(9.0 + t / 10, 9000.0) for t in range(50)] + [(14.0, 10000.0)]
    rate = drain_rate(10_000, 14.0, line, 5.0, 0.05)
    assert rate.value == pytest.approx(1000.0)
    assert "steady state: 10%→90%" in rate.how and "36%" in rate.how
    assert 10_000 / 14.0 < 800  # what the whole-drain rate would have said


def test_the_steady_window_ends_before_the_timer_bound_tail() -> None:
    line = [(t / 10, 100.0 * t) for t in range(101)]
    rate = drain_rate(10_000, 10.0, line, 5.0, 0.3)
    assert "10%→70%" in rate.how
    assert rate.value == pytest.approx(1000.0)


def test_a_drain_the_timer_dominates_is_not_measured() -> None:
    line = [(0.0, 0.0), (5.0, 110_000.0)]
    rate = drain_rate(110_000, 5.0, line, 5.0, 1.0)
    assert rate.value is None
    assert rate.how.startswith("not measured: the flush timer (5 s) is 100% of the 5.0 s drain")


def test_too_few_samples_in_the_window_is_not_measured() -> None:
    rate = drain_rate(1000, 2.0, [(0.0, 0.0), (1.0, 500.0), (2.0, 1000.0)], 1.0, 0.0)
    assert rate.value is None and "has 1 samples between" in rate.how


def test_an_unfinished_drain_is_not_measured() -> None:
    assert drain_rate(10, None, [], 1.0, 0.0).value is None


# --- the pipe: which pre-encoded pieces the fetched records pay for -------------------------
def test_a_piece_goes_only_when_all_its_records_have_arrived() -> None:
    ends = piece_ends(25_000, 10_000)
    assert ends == [10_000, 20_000, 25_000]
    assert released(0, ends) == 0
    assert released(9_999, ends) == 0
    assert released(10_000, ends) == 1
    assert released(24_999, ends) == 2
    assert released(25_000, ends) == 3
    assert piece_ends(0, 10) == []


def test_a_ceiling_is_taken_the_same_way_as_the_recorder_rate_it_is_compared_with() -> None:
    # A pipe that ramps up for 1 s, then 1,000 records/s.
    line = [(0.0, 0.0), (1.0, 100.0)] + [(1.0 + t / 10, 100.0 + 100.0 * t) for t in range(1, 10)]
    line.append((2.0, 1000.0))
    whole = Rate(10.0, "whole drain")
    steady = Rate(10.0, "steady", window=(0.1, 0.9))
    assert same_way(line, 1000, 2.0, whole) == 500.0
    assert same_way(line, 1000, 2.0, steady) == pytest.approx(1000.0)
    assert rate_between(line, 1000, 0.1, 0.9) == pytest.approx(1000.0)
    assert rate_between(line, 2000, 0.1, 0.9) is None  # never reaches 90 %


def test_the_first_record_is_read_from_the_recorders_consumed_counter() -> None:
    from bench.scenarios import records_consumed

    text = (
        "# HELP datarecorder_records_consumed_total Kafka records fetched\n"
        'datarecorder_records_consumed_total{topic="a"} 0.0\n'
        'datarecorder_records_consumed_total{topic="b"} 12.0\n'
        'datarecorder_records_consumed_created{topic="b"} 1.7e9\n'
    )
    assert records_consumed(text) == 12.0
    assert records_consumed("") == 0.0


def test_busy_figures_follow_the_rates_window_not_the_idle_tail() -> None:
    from bench.report import Rate
    from bench.run import keep_cpu
    from bench.scenarios import DrainResult

    # 10 s of records at 0.9 cores, then 5 s idle waiting a flush timer.
    line = [(t / 10, t / 10 * 1.8, t / 10 * 0.9 if t <= 100 else 9.0) for t in range(151)]
    d = DrainResult(
        records=1000, db_seconds=15.0, s3_seconds=None, startup_seconds=0.0, peak_rss=0,
        cpu_seconds=9.0, cpu_wall=15.0, machine_cores=1.2, cpu_line=line,
    )  # fmt: skip
    progress = [(t / 10, min(1000.0, t * 10.0)) for t in range(151)]
    r = Results(mode="full", ticks=10, books=1)
    keep_cpu(r, "whole", d)
    keep_cpu(r, "steady", d, Rate(100.0, "steady", window=(0.1, 0.9)), progress)
    assert round(r.cores["whole"], 2) == 0.6
    assert round(r.cores["steady"], 2) == 0.9 and round(r.machine_cores["steady"], 2) == 1.8
    assert "steady" in r.busy_window and "whole" not in r.busy_window
    # A whole-drain rate whose store was done at 10 s: up to then, not to the other store's end.
    keep_cpu(r, "own store", d, Rate(100.0, "whole"), progress[:101])
    assert round(r.cores["own store"], 2) == 0.9
    # A steady-state window too short to read: the limit is not known, not "it waits".
    keep_cpu(r, "short", d, Rate(100.0, "steady", window=(0.1, 0.15)), progress)
    r.recorder_db_only, r.recorder_db_only_how = 100.0, "steady state"
    r.cores["hot path"], r.busy_unknown = r.cores.pop("short"), {"hot path"}
    assert "limit: not known: the rate's window is too short" in render(r)
