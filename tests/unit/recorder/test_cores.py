"""Pure cores: offsets (CAS, seek, lag), batching (offer, due, hour split), rollups, keys, health."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from recorder.core.batching import (
    Batch,
    PartitionBuffer,
    is_due,
    next_due_in,
    split_by_hour,
    writer_for,
)
from recorder.core.columns import from_rows, offsets_of
from recorder.core.offsets import CasOutcome, cas_outcome, partition_lag, seek_position
from recorder.core.records import TickRow
from recorder.core.rollups import Bar, aggregate, merge
from recorder.http import health_report
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.parquet import object_key, progress_key
from recorder.sinks.timescale.migrate import DbMode, mode_for_license, plan_migrations

H = 3600 * 10**9


def cols(offsets: list[int], times: list[int] | None = None) -> pa.Table:
    """Tick columns at `offsets` (invalid records are the offsets left out)."""
    times = times or [H + o for o in offsets]
    rows = [TickRow(t, "A", 1.0 + o, o, None, None) for o, t in zip(offsets, times, strict=True)]
    return from_rows(TopicKind.TICK, offsets, rows)


def buffered_offsets(batch: Batch) -> list[int]:
    return [int(o) for o in offsets_of(batch.table())] if batch.count else []


def test_cas_outcomes() -> None:
    assert cas_outcome(10, 10, 20) is CasOutcome.APPLIED
    assert cas_outcome(None, None, 20) is CasOutcome.APPLIED
    assert cas_outcome(20, 10, 20) is CasOutcome.ALREADY_DONE
    assert cas_outcome(30, 10, 20) is CasOutcome.FENCED  # a new owner moved on: zombie
    assert cas_outcome(15, 10, 20) is CasOutcome.FENCED
    assert cas_outcome(5, None, 20) is CasOutcome.FENCED


def test_seek_position_is_smallest_progress_or_reset() -> None:
    assert seek_position([100, 40]) == 40
    assert seek_position([100, None]) == 100  # a sink without progress keeps no one back
    assert seek_position([None, None]) is None
    assert seek_position([]) is None


def test_partition_lag() -> None:
    assert partition_lag(100, 40) == 60
    assert partition_lag(100, None, log_start=10) == 90
    assert partition_lag(100, 5, log_start=10) == 90
    assert partition_lag(None, 5) == 0
    assert partition_lag(10, 20) == 0


def test_offer_skips_already_buffered_offsets_and_advances_on_invalid() -> None:
    buf = PartitionBuffer(Batch(start=10, end=10))
    assert buf.offer(cols([10, 12]), 13, now=1.0) == 2  # 11 was invalid
    assert buffered_offsets(buf.batch) == [10, 12] and buf.batch.end == 13
    # a re-seek replays 11..14: only 13 and 14 are new
    assert buf.offer(cols([11, 12, 13, 14]), 15, now=2.0) == 2
    assert buffered_offsets(buf.batch) == [10, 12, 13, 14] and len(buf.batch) == 4
    assert buf.batch.nbytes > 0
    done = buf.take()
    assert (done.start, done.end) == (10, 15)
    assert (buf.batch.start, buf.batch.end, buf.batch.count) == (15, 15, 0)


def test_only_invalid_records_still_advance_progress() -> None:
    buf = PartitionBuffer(Batch(start=None, end=-1))
    buf.offer(cols([]), 2, now=0.0)
    assert buf.batch.advanced and len(buf.batch) == 0
    assert is_due(buf.batch, now=5.0, max_rows=10, max_age=1.0)


def test_due_by_size_or_age() -> None:
    batch = Batch(start=0, end=3, chunks=[cols([0, 1, 2])], count=3, opened_at=10.0)
    assert is_due(batch, 10.0, max_rows=3, max_age=5.0)
    assert not is_due(batch, 10.0, max_rows=4, max_age=5.0)
    assert is_due(batch, 15.0, max_rows=4, max_age=5.0)
    assert next_due_in([batch], 12.0, 5.0) == pytest.approx(3.0)
    assert not is_due(Batch(start=3, end=3), 100.0, 1, 1.0)


def test_split_by_hour_names_each_file_by_its_first_offset() -> None:
    times = [5 * H + 1, 6 * H + 2, 5 * H + 3, 6 * H]
    groups = split_by_hour(cols([100, 101, 102, 103], times))
    got = [(h, first, part.column("offset").to_pylist()) for h, first, part in groups]
    assert got == [(5 * H, 100, [100, 102]), (6 * H, 101, [101, 103])]
    one = split_by_hour(cols([7, 8], [5 * H, 5 * H + 9]))
    assert [(h, first, part.num_rows) for h, first, part in one] == [(5 * H, 7, 2)]
    assert split_by_hour(cols([])) == []


def test_writer_assignment_is_stable() -> None:
    assert {writer_for("market.tick", p, 4) for _ in range(3) for p in [3]} == {
        writer_for("market.tick", 3, 4)
    }
    assert writer_for("x", 7, 1) == 0


def _ticks(seed: int, n: int) -> list[TickRow]:
    rng = random.Random(seed)
    return [
        TickRow(
            rng.randrange(0, 10 * 60 * 10**9),
            rng.choice("AB"),
            float(rng.randrange(1, 100)),
            rng.randrange(0, 9),
            None,
            None,
        )
        for _ in range(n)
    ]


def test_rollup_matches_definition() -> None:
    rows = [
        TickRow(0, "A", 10.0, 1, None, None),
        TickRow(30 * 10**9, "A", 12.0, 2, None, None),
        TickRow(10 * 10**9, "A", 8.0, 3, None, None),
        TickRow(61 * 10**9, "A", 9.0, 4, None, None),
    ]
    bars = aggregate(rows, 60 * 10**9)
    assert bars[0][:7] == (0, "A", 10.0, 12.0, 8.0, 12.0, 6)
    assert bars[1][:7] == (60 * 10**9, "A", 9.0, 9.0, 9.0, 9.0, 4)


def test_rollup_of_parts_merges_to_rollup_of_whole() -> None:
    """What the upsert does must not depend on how batches split the ticks."""
    rows = _ticks(1, 500)
    whole = {(b.symbol, b.bucket_ns): b for b in aggregate(rows, 60 * 10**9)}
    merged: dict[tuple[str, int], Bar] = {}
    for part in (rows[:123], rows[123:400], rows[400:]):
        for b in aggregate(part, 60 * 10**9):
            key = (b.symbol, b.bucket_ns)
            merged[key] = merge(merged[key], b) if key in merged else b
    assert {k: v[:7] for k, v in merged.items()} == {k: v[:7] for k, v in whole.items()}


def test_object_keys_are_hive_partitioned_and_deterministic() -> None:
    hour = 1764133200 * 10**9  # 2025-11-26T05:00Z
    key = object_key("market-data", TopicKind.TICK, hour, "market.tick", 3, 12345)
    assert key == (
        "market-data/tick/year=2025/month=11/day=26/hour=05/market.tick-p3-o00000000000000012345.parquet"
    )
    assert object_key("/", TopicKind.ORDERBOOK, hour, "t", 0, 0).startswith("orderbook/year=2025/")
    assert (
        progress_key("market-data", "grp", "market.tick", 3)
        == "market-data/_recorder/groups/grp/progress/market.tick/3.json"
    )


def test_health_report_names_the_failing_part() -> None:
    assert health_report({"consumer": None, "timescaledb": None, "s3": None}) == (
        200,
        "OK\nconsumer: healthy\ntimescaledb: healthy\ns3: healthy\n",
    )
    status, body = health_report({"consumer": None, "timescaledb": "store_unreachable"})
    assert status == 503 and "timescaledb: unhealthy store_unreachable" in body


def test_migration_plan_picks_the_mode_variant_once() -> None:
    files = {
        "0001_a.sql": "A",
        "0002_b.timescaledb.sql": "TS",
        "0002_b.postgres.sql": "PG",
        "0003_c.timescaledb+apache.sql": "HYPER",
        "0004_d.postgres+apache.sql": "OURS",
        "README": "",
    }
    assert [m.sql for m in plan_migrations(files, DbMode.POSTGRES, set())] == ["A", "PG", "OURS"]
    assert [m.sql for m in plan_migrations(files, DbMode.TIMESCALEDB, {1})] == ["TS", "HYPER"]
    apache = plan_migrations(files, DbMode.TIMESCALEDB_APACHE, set())
    assert [m.sql for m in apache] == ["A", "HYPER", "OURS"]
    with pytest.raises(ValueError, match="two migrations"):
        plan_migrations({"0001_a.sql": "", "0001_b.sql": ""}, DbMode.POSTGRES, set())


def test_the_license_decides_the_mode() -> None:
    assert mode_for_license(None)[0] is DbMode.POSTGRES
    assert mode_for_license("apache")[0] is DbMode.TIMESCALEDB_APACHE
    assert mode_for_license("timescale")[0] is DbMode.TIMESCALEDB
    with pytest.raises(ValueError, match=r"timescaledb.license = 'community'"):
        mode_for_license("community")


def test_a_never_written_empty_buffer_records_no_progress() -> None:
    assert not Batch(start=None, end=-1).advanced
