"""The Iceberg store's pure parts: the progress in a snapshot summary and a commit's decision
(rule 1) against a simple reference, the rows' exact nanoseconds, the catalog's settings.

The same rules on the real catalog: tests/integration/recorder/test_iceberg.py and
tests/integration/faults/test_iceberg_zombie.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import psycopg2
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg2 import extensions
from sqlalchemy.engine import make_url

from recorder.core.columns import TICK_SCHEMA
from recorder.core.errors import ConfigError
from recorder.core.offsets import TP, CasOutcome
from recorder.runtime.retry import Transient
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.iceberg import rows, wait
from recorder.sinks.iceberg.config import LIBPQ_PARAMS, IcebergConfig, catalog_uri
from recorder.sinks.iceberg.progress import (
    OFFSETS,
    CorruptProgress,
    TableProgress,
    committed,
    decide,
    from_summary,
    with_starts,
    with_topic_ids,
)
from recorder.sinks.iceberg.service import IcebergStore
from recorder.tools.lake_compact import parse_hour
from recorder.tools.lake_maintain import (
    Listed,
    Snap,
    expire_plan,
    orphans,
    parse_age,
    protected_ids,
)

tps = st.builds(TP, st.sampled_from(["market.tick", "a.b-c_d", "x"]), st.integers(0, 5))
offsets = st.integers(0, 50)
stored_maps = st.dictionaries(tps, offsets, max_size=6)


def reference(stored: Mapping[TP, int], start: int | None, end: int, tp: TP) -> CasOutcome:
    """Rule 1 said plainly: a batch applies where the progress is its first offset."""
    have = stored.get(tp)
    if have == start:
        return CasOutcome.APPLIED
    if have == end and start != end:
        return CasOutcome.ALREADY_DONE
    return CasOutcome.FENCED


@given(stored_maps, st.dictionaries(tps, st.tuples(st.none() | offsets, offsets), max_size=6))
def test_a_commit_applies_exactly_where_the_progress_is_its_first_offset(
    stored: dict[TP, int], ranges: dict[TP, tuple[int | None, int]]
) -> None:
    got = decide(stored, ranges)
    assert got == {tp: reference(stored, s, e, tp) for tp, (s, e) in ranges.items()}


@given(stored_maps, stored_maps, st.dictionaries(st.sampled_from(["t", "u"]), st.uuids().map(str)))
def test_a_commit_moves_its_partitions_and_carries_every_other(
    stored: dict[TP, int], ends: dict[TP, int], ids: dict[str, str]
) -> None:
    before = TableProgress("g", stored, ids)
    after = committed(before, ends, "g")
    for tp in stored.keys() | ends.keys():
        assert after.offsets[tp] == ends.get(tp, stored.get(tp))
    assert after.topic_ids == ids
    assert from_summary(after.summary(), "t") == after  # what is written reads back the same


@given(stored_maps, stored_maps)
def test_starts_never_replace_stored_progress(stored: dict[TP, int], starts: dict[TP, int]) -> None:
    after = with_starts(TableProgress("g", stored), starts, "g")
    if not starts.keys() - stored.keys():
        assert after is None  # nothing to commit
        return
    assert after is not None
    assert after.offsets == {**starts, **stored}


def test_topic_ids_are_added_once() -> None:
    first = with_topic_ids(TableProgress("g", {TP("t", 0): 1}), {"t": "id-1"}, "g")
    assert first is not None and first.topic_ids == {"t": "id-1"}
    assert with_topic_ids(first, {"t": "id-2"}, "g") is None  # a recorded ID is never replaced


@st.composite
def interleavings(draw: st.DrawFn) -> list[tuple[int, int, bool]]:
    """Steps of writers 0..2 on one partition: (writer, batch size, reads a fresh snapshot)."""
    steps = st.tuples(st.integers(0, 2), st.integers(1, 4), st.booleans())
    return draw(st.lists(steps, min_size=1, max_size=40))


@given(interleavings())
def test_interleaved_writers_record_every_offset_once(steps: list[tuple[int, int, bool]]) -> None:
    """Three writers of one partition (owner, zombie, replay) each hold a position and a
    snapshot they read (possibly stale); a commit goes through only against the current
    snapshot (the catalog's swap) and only as `decide` says. Whatever the interleaving, the
    committed ranges tile [0, progress) exactly: no offset twice, none missing."""
    tp = TP("t", 0)
    version, current = 0, TableProgress("g", {tp: 0})  # the table's current snapshot
    seen = [(version, current)] * 3  # each writer's last read snapshot
    position = [0, 0, 0]
    recorded: list[int] = []
    for writer, size, refresh in steps:
        if refresh:
            seen[writer] = (version, current)
        read, progress = seen[writer]
        start, end = position[writer], position[writer] + size
        outcome = decide(progress.offsets, {tp: (start, end)})[tp]
        if outcome is CasOutcome.APPLIED:
            if read != version:  # CommitFailedException: read again
                seen[writer] = (version, current)
                continue
            recorded.extend(range(start, end))
            version, current = version + 1, committed(progress, {tp: end}, "g")
            seen[writer] = (version, current)
            position[writer] = end
        elif outcome is CasOutcome.ALREADY_DONE:
            position[writer] = end
        else:
            position[writer] = progress.offsets[tp]  # fenced: fed again from the stored progress
    final = current.offsets[tp]
    assert sorted(recorded) == list(range(final))


@pytest.mark.parametrize(
    "props",
    [
        {OFFSETS: "[1]"},
        {OFFSETS: '{"t": 1}'},
        {OFFSETS: '{"t/0": -1}'},
        {OFFSETS: '{"t/0": "1"}'},
        {OFFSETS: "{", "x": ""},
    ],
)
def test_a_corrupt_summary_is_named_not_guessed(props: dict[str, str]) -> None:
    with pytest.raises(CorruptProgress, match="table x"):
        from_summary(props, "table x")


def test_a_snapshot_of_another_tool_holds_no_progress() -> None:
    assert from_summary({"added-data-files": "1"}, "t") is None


@given(st.lists(st.integers(631_152_000 * 10**9, 4_102_444_800 * 10**9), max_size=20))
def test_rows_keep_the_nanoseconds_as_sent_and_partition_by_their_hour(times: list[int]) -> None:
    n = len(times)
    columns = pa.table(
        {
            "offset": pa.array(range(n), pa.int64()),
            "time_ns": pa.array(times, pa.int64()),
            "symbol": ["s"] * n,
            "price": [1.0] * n,
            "volume": pa.array([1] * n, pa.int64()),
            "change": pa.array([None] * n, pa.float64()),
            "change_rate": [0.5] * n,
        },
        schema=TICK_SCHEMA,
    )
    out = rows.rows(TopicKind.TICK, columns, "typed")
    assert out.column("timestamp_ns").to_pylist() == times
    micros = out.column("timestamp").cast(pa.int64()).to_pylist()
    assert micros == [t // 1000 for t in times]
    hour_ns = 3600 * 10**9
    assert [m * 1000 // hour_ns for m in micros] == [t // hour_ns for t in times]


def test_catalog_uri_takes_its_password_from_the_secret_and_never_shows_it() -> None:
    s = Settings(
        _env_file=None,
        ICEBERG_CATALOG_URI="postgresql+psycopg2://ice@db:5432/cat",
        ICEBERG_CATALOG_PASSWORD="p@ss/word",
    )
    assert catalog_uri(s) == (f"postgresql+psycopg2://ice:p%40ss%2Fword@db:5432/cat?{LIBPQ_PARAMS}")
    assert "p%40ss" not in repr(IcebergConfig.of(s))
    own = Settings(
        _env_file=None, TIMESCALEDB_USER="rec", TIMESCALEDB_PASSWORD="pw", TIMESCALEDB_DB="md"
    )
    assert catalog_uri(own) == f"postgresql+psycopg2://rec:pw@localhost:5432/md?{LIBPQ_PARAMS}"
    assert IcebergConfig.of(own).warehouse == "s3://market-data/market-data"


def test_the_catalog_connection_is_bounded_by_the_server_and_by_keepalives() -> None:
    query = make_url(catalog_uri(Settings(_env_file=None))).query
    assert query["connect_timeout"] == "10"
    assert query["keepalives"] == "1"
    assert query["options"] == "-c statement_timeout=30000"


def test_lake_compact_takes_an_hour_that_has_ended_and_says_the_form_otherwise() -> None:
    now = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    nine = datetime(2026, 11, 26, 9, tzinfo=UTC)
    for text in ("2026-11-26T09", "2026-11-26T09:00", "2026-11-26T09:00:00Z", " 2026-11-26t09 "):
        assert parse_hour(text, now) == nine
    assert parse_hour("2026-11-26T11:00+02:00", now) == nine  # a zone names the same instant
    for text in ("2026-11-26T10", "2026-11-26T09:30", "yesterday", "2026-11-26T09:00+05:30"):
        with pytest.raises(ConfigError, match="--hour"):
            parse_hour(text, now)


def test_lake_upkeep_ages_take_a_unit_and_say_the_form_otherwise() -> None:
    assert parse_age("7d", "--older-than") == timedelta(days=7)
    assert parse_age("36h", "--older-than") == timedelta(hours=36)
    assert parse_age("90m", "--older-than") == timedelta(minutes=90)
    assert parse_age("0", "--older-than") == timedelta(0)
    assert parse_age("1.5w", "--older-than") == timedelta(days=10.5)
    for text in ("", "7 days", "-1d", "d"):
        with pytest.raises(ConfigError, match="--older-than"):
            parse_age(text, "--older-than")


def test_expiry_keeps_the_newest_of_the_branch_the_protected_and_the_young() -> None:
    snaps = [Snap(i, i * 1000) for i in range(1, 11)]
    lineage = list(range(10, 0, -1))  # newest first
    # Everything old may go but the current one and what is protected.
    assert expire_plan(snaps, lineage, {4}, cutoff_ms=10**9, retain_last=1) == {
        1,
        2,
        3,
        5,
        6,
        7,
        8,
        9,
    }
    # retain_last keeps the newest of the branch whatever their age; the cutoff keeps the young.
    assert expire_plan(snaps, lineage, set(), cutoff_ms=10**9, retain_last=3) == set(range(1, 8))
    assert expire_plan(snaps, lineage, set(), cutoff_ms=5000, retain_last=1) == {1, 2, 3, 4}
    # retain_last below 1 still keeps the current snapshot: it carries the progress.
    assert 10 not in expire_plan(snaps, lineage, set(), cutoff_ms=10**9, retain_last=0)


def test_orphans_are_the_unreferenced_files_older_than_the_cutoff() -> None:
    listed = [
        Listed("b/t/data/a.parquet", 100.0, 1),  # referenced
        Listed("b/t/data/b.parquet", 100.0, 2),  # an old upload nothing committed
        Listed("b/t/data/c.parquet", 900.0, 3),  # a young upload: perhaps a commit in flight
        Listed("b/t/metadata/snap-1.avro", 50.0, 4),  # an expired snapshot's manifest list
    ]
    found = orphans(listed, {"b/t/data/a.parquet"}, cutoff_s=500.0)
    assert [f.path for f in found] == ["b/t/data/b.parquet", "b/t/metadata/snap-1.avro"]


def test_the_progress_snapshot_and_the_way_to_it_are_never_expired() -> None:
    lineage = [9, 8, 7, 6, 5]  # 9 current, 7 the newest carrying the progress (8, 9: others')
    assert protected_ids(lineage, {9, 3}, 7) == {9, 8, 7, 3}
    assert protected_ids(lineage, {9}, None) == {9}
    snaps = [Snap(i, 0) for i in range(3, 10)]
    doomed = expire_plan(snaps, lineage, protected_ids(lineage, {9}, 7), 1, retain_last=1)
    assert doomed == {3, 4, 5, 6}


class _SilentConn:
    """A psycopg2 connection as the wait callback sees it, whose server never answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.polls = 0

    def poll(self) -> int:
        self.polls += 1
        return int(extensions.POLL_READ)

    def fileno(self) -> int:
        return self.sock.fileno()


def test_a_catalog_call_gives_up_when_its_connection_stays_silent() -> None:
    here, there = socket.socketpair()
    try:
        conn = _SilentConn(here)
        wait.install(0.2)
        with pytest.raises(psycopg2.OperationalError, match=r"did not answer within 0\.2s"):
            wait.wait_bounded(conn)
        there.send(b"x")  # a byte arrives: the wait goes on polling
        calls = iter([extensions.POLL_READ, extensions.POLL_OK])
        conn.poll = lambda: int(next(calls))  # type: ignore[method-assign]
        wait.wait_bounded(conn)
    finally:
        wait.install()
        extensions.set_wait_callback(None)
        here.close()
        there.close()


async def test_a_probe_of_a_silent_catalog_holds_one_thread_not_one_per_probe() -> None:
    """The driver's probe times out after PROBE_TIMEOUT_SEC while the catalog call goes on in
    its thread: the next probes fail at once instead of starting more threads."""
    release = threading.Event()
    started: list[int] = []

    class SilentTables:
        def probe(self) -> None:
            started.append(1)
            release.wait(10)

    store = IcebergStore(
        IcebergConfig.of(Settings(_env_file=None)),
        {},
        SilentTables(),  # type: ignore[arg-type]
        lambda _exc: None,
    )
    try:
        for _ in range(3):
            with pytest.raises((TimeoutError, Transient)):
                async with asyncio.timeout(0.2):
                    await store.probe()
        assert started == [1]
    finally:
        release.set()
    assert store.probing is not None
    await store.probing
    await store.probe()  # answered: the next probe is a new call
    assert started == [1, 1]
