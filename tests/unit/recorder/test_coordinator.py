"""The coordinator (recorder.pipeline.Recorder and recorder.coordinator) over in-memory sinks,
source and dead-letter queue implementing its protocols, on a clock the tests drive: the order
of seeks, offers, flushes, commits, pauses and revokes.

Pure sequencing only; the same paths run on real Kafka, PostgreSQL and S3 in
tests/integration/recorder and tests/integration/faults (rebalances, zombies, halts, DLQ refusal).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest

from recorder.app import enabled_sinks, progress_to
from recorder.coordinator.health import STALLED_FETCH_SEC, dead_letter_part
from recorder.coordinator.health import problems as health_problems
from recorder.coordinator.intake import COMMIT_INTERVAL_SEC
from recorder.coordinator.ports import RebalanceCallback
from recorder.coordinator.rebalance import HELD_RETRY_MIN_SEC
from recorder.core.backpressure import DEAD_LETTER_BACKOFF_SEC, BufferLimits
from recorder.core.commit import committing_sink
from recorder.core.offsets import TP
from recorder.core.partitions import PartitionTable, Status
from recorder.core.readiness import Problem
from recorder.http import health_parts, health_report, readiness_parts, readiness_report
from recorder.kafka.dlq import DeadLetter, DeadLetterRefused
from recorder.pipeline import Recorder
from recorder.runtime.settings import Settings
from recorder.sinks.base import NOT_ANSWERING, Health, ProgressCallback, ResyncCallback

TOPIC = "market.tick"
A, B = TP(TOPIC, 0), TP(TOPIC, 1)
Events = list[tuple[str, ...]]


def tick(offset: int, valid: bool = True) -> Message:
    body = b'{"symbol":"X","price":1.5,"volume":1}' if valid else b"not json"
    return Message(offset, body, 1_764_133_200_000)


@dataclass
class Message:
    offset: int
    value: bytes
    timestamp: int
    key: bytes | None = None


class FakeSink:
    """A sink in memory: buffers per partition, durable on flush, progress reported."""

    def __init__(
        self,
        name: str,
        events: Events,
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
        stored: Mapping[TP, int | None] | None = None,
    ) -> None:
        self.name = name
        self.healthy = True
        self.error: str | None = None  # a write's raw error (driver: "its writes fail: ...")
        self.events = events
        self.on_progress = on_progress
        self.on_resync = on_resync
        self.stored: dict[TP, int | None] = dict(stored or {})
        self.buffers: dict[TP, list[int]] = {}
        self.ends: dict[TP, int] = {}
        self.rows: dict[TP, list[int]] = {}  # offsets made durable
        self.corrupt: str | None = None  # load_progress raises with this message
        self.gate: asyncio.Event | None = None  # flush_all waits for it when set
        # A pending range [0, end) per partition (the lake's, recorded by a writer with larger
        # buffers): flushed only whole, as soon as an offer reaches its end.
        self.hold_until: dict[TP, int] = {}
        self.ids: dict[TP, str] = {}  # the topic ID each partition's progress counts

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        if self.corrupt:
            raise ValueError(self.corrupt)
        return {tp: self.stored.get(tp) for tp in tps}

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        self.stored.update(starts)
        self.events.append((self.name, "store_start", *map(str, sorted(starts.values()))))
        return dict(starts)

    async def load_identity(self, tps: Collection[TP]) -> dict[TP, str | None]:
        return {tp: self.ids.get(tp) for tp in tps}

    async def store_identity(self, ids: Mapping[TP, str]) -> None:
        for tp, topic_id in ids.items():
            self.ids.setdefault(tp, topic_id)

    async def known_partitions(self, topics: Collection[str]) -> dict[str, set[int]]:
        return {
            t: {tp.partition for tp, v in self.stored.items() if tp.topic == t and v is not None}
            for t in topics
        }

    def assign(self, progress: Mapping[TP, int | None]) -> None:
        for tp, value in progress.items():
            self.buffers[tp] = []
            self.stored[tp] = value

    def offer(self, tp: TP, columns: pa.Table, end: int) -> None:
        buffer = self.buffers[tp]
        floor = self.stored.get(tp) or 0
        offsets = [int(o) for o in columns.column("offset").to_pylist()]
        buffer.extend(o for o in offsets if o >= floor)
        self.ends[tp] = end
        if tp in self.hold_until and end >= self.hold_until[tp]:
            del self.hold_until[tp]
            asyncio.get_running_loop().create_task(self.flush_all([tp]))
        first = str(offsets[0]) if offsets else "-"
        self.events.append((self.name, "offer", str(tp.partition), first, str(end)))

    def buffered(self) -> int:
        return sum(map(len, self.buffers.values()))

    def buffered_bytes(self) -> int:
        return 320 * self.buffered()

    def progress(self) -> dict[TP, int | None]:
        return dict(self.stored)

    def completing(self) -> dict[TP, tuple[int, int]]:
        return {tp: (0, end) for tp, end in self.hold_until.items() if self.ends.get(tp, 0) < end}

    async def flush_all(self, tps: Collection[TP] | None = None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        for tp in sorted(self.buffers if tps is None else tps):
            if tp not in self.ends or tp in self.hold_until:
                continue
            self.rows.setdefault(tp, []).extend(self.buffers[tp])
            self.buffers[tp] = []
            self.stored[tp] = self.ends.pop(tp)
            self.events.append((self.name, "flush", str(tp.partition), str(self.stored[tp])))
            self.on_progress(tp, self.stored[tp] or 0)

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self.buffers.pop(tp, None)
            self.ends.pop(tp, None)
        self.events.append((self.name, "revoke", *sorted(str(tp.partition) for tp in tps)))

    async def abandon(self, tps: Collection[TP]) -> None:
        self.events.append((self.name, "abandon"))

    async def check_health(self) -> bool:
        return True

    def health(self) -> Health:
        if self.error is not None:
            return Health(False, f"its writes fail: {self.error}")
        return Health(True) if self.healthy else Health(False, NOT_ANSWERING)

    def failure(self) -> str | None:
        return None


class FakeSource:
    """A consumer-group member in memory: positions, a log per partition, commits."""

    index = 0

    def __init__(self, events: Events, logs: dict[TP, list[Message]]) -> None:
        self.events = events
        self.logs = logs
        self.owned: set[TP] = set()
        self.position: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.committed: dict[TP, int] = {}
        self.callbacks: tuple[RebalanceCallback, RebalanceCallback] | None = None
        self.starts: dict[TP, int] = {}  # log starts (retention moves them)
        self.ends: dict[TP, int] = {}  # fetched ends past the last record (transaction markers)
        self.topic_id: str | None = "id-1"  # the topic's current ID (None: an old broker)
        self.fetches = 0

    async def start(self, on_revoked: RebalanceCallback, on_assigned: RebalanceCallback) -> None:
        self.callbacks = (on_revoked, on_assigned)

    async def rebalance(self, revoked: set[TP], assigned: set[TP]) -> None:
        assert self.callbacks is not None
        await self.callbacks[0](revoked)
        self.owned -= revoked
        self.owned |= assigned
        for tp in assigned:
            self.position[tp] = 0
        await self.callbacks[1](assigned)

    async def stop(self) -> None: ...

    def assignment(self) -> set[TP]:
        return set(self.owned)

    def take(self, tp: TP, n: int) -> dict[TP, list[Any]]:
        """What a fetch of `tp` returns now (moves the position on, as aiokafka does)."""
        start = self.position[tp]
        batch = [m for m in self.logs[tp] if start <= m.offset < start + n]
        self.position[tp] = start + len(batch)
        return {tp: batch} if batch else {}

    async def fetch(self, timeout_ms: int, max_records: int) -> Mapping[TP, list[Any]]:
        self.fetches += 1
        for tp in sorted(self.owned - self.paused):
            data = self.take(tp, max_records)
            if data:
                return data
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def fetched_end(self, tp: TP) -> int | None:
        return self.ends.get(tp, self.position.get(tp))

    def seek(self, tp: TP, offset: int) -> None:
        self.position[tp] = offset
        self.events.append(("source", "seek", str(tp.partition), str(offset)))

    async def reset_positions(self, tps: Collection[TP]) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    async def log_starts(self, tps: Collection[TP]) -> dict[TP, int]:
        return {tp: self.starts.get(tp, 0) for tp in tps}

    async def topic_ids(self, topics: Collection[str]) -> dict[str, str | None]:
        return {t: self.topic_id for t in topics}

    def pause(self, tps: Collection[TP]) -> None:
        self.paused |= set(tps)

    def resume(self, tps: Collection[TP]) -> None:
        self.paused -= set(tps)

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        wanted = {tp: o for tp, o in offsets.items() if tp in self.owned}
        if wanted:
            self.committed.update(wanted)
            self.events.append(
                ("source", "commit", *(f"{p}={o}" for (_, p), o in sorted(wanted.items())))
            )

    def highwater(self, tp: TP) -> int | None:
        return len(self.logs.get(tp, []))

    def stable_end(self, tp: TP) -> int | None:
        return self.highwater(tp)

    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]:
        return {tp: len(self.logs.get(tp, [])) for tp in tps}


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []
        self.refuse: str | None = None

    async def start(self, topics: Sequence[str]) -> None: ...
    async def close(self) -> None: ...

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        if self.refuse is not None and letters:
            parts = frozenset((d.topic, d.partition) for d in letters)
            raise DeadLetterRefused(parts, self.refuse)
        self.sent.extend(letters)


class FakeClock:
    """The coordinator's clock, moved only by the test: `sleep` returns once `advance` has moved
    the time past its end (the shutdown's deadline is the process's own, not on this clock)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    def sleepers(self) -> int:
        """Tasks waiting on this clock now (a task just created has not started its sleep)."""
        return sum(not wake.done() for _, _, wake in self._sleepers)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                wake.set_result(None)


@dataclass
class Rig:
    recorder: Recorder
    source: FakeSource
    sinks: dict[str, FakeSink]
    dlq: FakeDeadLetters
    events: Events
    clock: FakeClock

    async def fetch_and_handle(self, tp: TP, n: int = 1000) -> None:
        data = self.source.take(tp, n)
        await self.recorder.intake.handle(self.source, data, self.recorder.partitions.epochs(data))


def rig(
    logs: dict[TP, list[Message]],
    stored: Mapping[str, Mapping[TP, int | None]] | None = None,
    *,
    s3: bool = True,
    db: bool = True,
    on_truncation: str = "resume",
    **extra: Any,
) -> Rig:
    settings = Settings(
        _env_file=None,
        KAFKA_TOPICS=[TOPIC],
        DB_WRITE_ENABLED=db,
        S3_WRITE_ENABLED=s3,
        ON_LOG_TRUNCATION=on_truncation,
        **extra,
    )
    events: Events = []
    table = PartitionTable()
    names = enabled_sinks(settings)
    committing = committing_sink(names)
    sinks = {
        n: FakeSink(
            n, events, progress_to(table, n, committing), table.resync, (stored or {}).get(n)
        )
        for n in names
    }
    source = FakeSource(events, logs)
    dlq = FakeDeadLetters()
    clock = FakeClock()
    limits = BufferLimits(100, 10**6)
    recorder = Recorder(settings, list(sinks.values()), [source], dlq, table, limits, clock)
    return Rig(recorder, source, sinks, dlq, events, clock)


def problems(recorder: Recorder) -> dict[str, Problem]:
    """What /ready reports besides the consumer and the stores."""
    return health_problems(recorder.partitions, recorder.sinks)


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Wait for `condition` (checked every few milliseconds); fail with `what` after `within`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"not reached in {within}s: {what}")


def log_of(tp: TP, n: int, bad: Collection[int] = ()) -> list[Message]:
    return [tick(i, valid=i not in bad) for i in range(n)]


async def test_assignment_seeks_to_the_smallest_progress_and_keeps_each_sinks_own() -> None:
    r = rig({A: log_of(A, 50)}, {"timescaledb": {A: 30}, "s3": {A: None}})
    await r.source.start(r.recorder.rebalance.on_revoked, r.recorder.rebalance.on_assigned)  # type: ignore[arg-type]
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    # The lake had no progress: it starts where the reset policy says (0) and stores that;
    # the database keeps its 30; the consumer resumes at the smaller.
    assert ("s3", "store_start", "0") in r.events
    assert ("source", "seek", "0", "0") in r.events
    assert r.recorder.partitions.status(A) is Status.READY
    await r.fetch_and_handle(A)
    assert r.sinks["timescaledb"].buffers[A] == list(range(30, 50))
    assert r.sinks["s3"].buffers[A] == list(range(50))


async def test_revocation_flushes_then_commits_the_hot_path_then_revokes() -> None:
    r = rig({A: log_of(A, 20), B: log_of(B, 20)})
    r.source.owned = {A, B}
    await r.recorder.rebalance.on_assigned(r.source, {A, B})
    await r.fetch_and_handle(A)
    await r.fetch_and_handle(B)
    r.events.clear()
    await r.recorder.rebalance.on_revoked(r.source, {A})
    assert r.events == [
        ("timescaledb", "flush", "0", "20"),
        ("s3", "flush", "0", "20"),
        ("source", "commit", "0=20"),  # the database's progress, once, before giving A up
        ("timescaledb", "revoke", "0"),
        ("s3", "revoke", "0"),
    ]
    assert r.recorder.partitions.status(A) is Status.REVOKED
    assert r.recorder.partitions.status(B) is Status.READY
    assert r.sinks["timescaledb"].buffers[B] == list(range(20))  # B untouched


async def test_the_lake_drives_commits_only_without_the_database() -> None:
    both = rig({A: log_of(A, 10)})
    both.source.owned = {A}
    await both.recorder.rebalance.on_assigned(both.source, {A})
    await both.fetch_and_handle(A)
    await both.sinks["s3"].flush_all()
    assert both.recorder.partitions.take_commits() == {}  # the lake alone moves nothing
    lake_only = rig({A: log_of(A, 10)}, db=False)
    lake_only.source.owned = {A}
    await lake_only.recorder.rebalance.on_assigned(lake_only.source, {A})
    await lake_only.fetch_and_handle(A)
    await lake_only.sinks["s3"].flush_all()
    assert lake_only.recorder.partitions.take_commits() == {A: 10}


async def test_a_batch_fetched_before_a_rebalance_is_not_offered() -> None:
    r = rig({A: log_of(A, 10)})
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    data = r.source.take(A, 10)
    stale = r.recorder.partitions.epochs(data)
    await r.recorder.rebalance.on_revoked(r.source, {A})
    await r.recorder.rebalance.on_assigned(r.source, {A})
    r.events.clear()
    await r.recorder.intake.handle(r.source, data, stale)
    assert not any(e[1] == "offer" for e in r.events)


async def test_a_resync_seeks_back_to_the_sinks_progress_before_taking_records() -> None:
    r = rig({A: log_of(A, 40)}, {"timescaledb": {A: 0}, "s3": {A: 0}})
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    await r.fetch_and_handle(A, 10)
    await r.sinks["timescaledb"].flush_all()  # both at 10 after their flushes
    await r.sinks["s3"].flush_all()
    await r.fetch_and_handle(A, 10)  # 10..19 buffered
    r.sinks["s3"].buffers[A] = []  # the lake's flush was fenced: it drops its buffer
    r.sinks["s3"].on_resync(A)
    await r.fetch_and_handle(A, 10)  # 20..29 arrive from the old position: not offered
    assert r.sinks["s3"].buffers[A] == []
    r.events.clear()
    await r.recorder.rebalance.apply_resyncs(r.source)
    assert r.events == [("source", "seek", "0", "10")]
    await r.fetch_and_handle(A, 30)
    assert r.sinks["s3"].buffers[A] == list(range(10, 40))


def halted(cause: str, *tps: TP) -> Problem:
    """/ready's part "partitions" for these halted partitions (the reason text is logged)."""
    return Problem("partition_halted", tuple((tp.topic, tp.partition, cause) for tp in tps))


async def test_progress_beyond_the_log_end_halts_the_partition_until_revoked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = rig({A: log_of(A, 5)}, {"timescaledb": {A: 100}, "s3": {A: 100}})
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    try:
        assert r.recorder.partitions.status(A) is Status.HALTED
        assert A in r.source.paused
        assert problems(r.recorder)["partitions"] == halted("log_replaced", A)
        assert "beyond the log end 5" in capsys.readouterr().out  # the detail: in the log
        assert not any(e[:2] == ("source", "seek") for e in r.events)
    finally:
        assert r.recorder.rebalance.held_retry is not None
        r.recorder.rebalance.held_retry.cancel()
    await r.recorder.rebalance.on_revoked(r.source, {A})
    assert problems(r.recorder) == {}


async def test_probe_bodies_carry_codes_and_partition_names_never_raw_errors() -> None:
    """/ready and /health are readable by anyone who reaches the pod's port: a store's error
    text (host, user, bucket) and a refused dead letter's reason stay out of their bodies."""
    r = rig({A: log_of(A, 10, bad={3}), B: log_of(B, 5)}, {"timescaledb": {B: 100}, "s3": {}})
    r.source.owned = {A, B}
    await r.recorder.rebalance.on_assigned(r.source, {A, B})
    try:
        r.dlq.refuse = "RecordTooLargeError at broker-7.internal:9093"
        await r.fetch_and_handle(A)
        db, lake = r.sinks["timescaledb"], r.sinks["s3"]
        db.healthy, db.error = False, "OperationalError: password authentication failed for alice"
        lake.healthy = False
        r.recorder.health.started = True
        status, ready = readiness_report(readiness_parts(r.recorder))
        health_status, health = health_report(health_parts(r.recorder))
    finally:
        assert r.recorder.rebalance.held_retry is not None
        r.recorder.rebalance.held_retry.cancel()
    assert status == 503 and health_status == 503
    lines = ready.splitlines()
    assert lines[0] == "not ready"
    assert f"partitions: partition_halted ({TOPIC}[1] log_replaced) - " in ready, ready
    assert f"dead_letters: dead_letters_refused ({TOPIC}[0]) - " in ready, ready
    assert "timescaledb: writes_failing - " in ready and "s3: store_unreachable - " in ready
    assert "timescaledb: unhealthy writes_failing" in health
    assert "s3: unhealthy store_unreachable" in health
    assert "dead_letters: unhealthy dead_letters_refused" in health
    for secret in ("alice", "password", "broker-7", "RecordTooLarge", "100", "log end"):
        assert secret not in ready + health, secret


async def test_refused_dead_letters_keep_the_batch_out_and_the_partition_unready() -> None:
    r = rig({A: log_of(A, 10, bad={3})})
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    r.dlq.refuse = "RecordTooLargeError"
    await r.fetch_and_handle(A)
    assert r.sinks["timescaledb"].buffers[A] == []  # nothing past an unsent dead letter
    assert r.recorder.partitions.status(A) is Status.RESYNC
    ok, why = dead_letter_part(r.recorder.partitions)
    assert not ok and "RecordTooLargeError" in why
    assert problems(r.recorder)["dead_letters"] == Problem(
        "dead_letters_refused", ((A.topic, A.partition, None),)
    )
    r.dlq.refuse = None
    await r.recorder.rebalance.apply_resyncs(r.source)
    await r.fetch_and_handle(A)
    assert [d.offset for d in r.dlq.sent] == [3]
    assert r.sinks["timescaledb"].buffers[A] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert dead_letter_part(r.recorder.partitions) == (True, "")


async def test_the_running_loop_commits_and_shutdown_commits_the_rest() -> None:
    r = rig({A: log_of(A, 30)}, s3=False)
    await r.recorder.start()
    try:
        await r.source.rebalance(set(), {A})
        db = r.sinks["timescaledb"]
        await until(lambda: db.buffered() == 30, "the loop offers what it fetches")
        await db.flush_all()
        await until(lambda: r.source.committed.get(A) == 30, "the loop commits progress")
        r.source.logs[A] += [tick(i) for i in range(30, 45)]
        await until(lambda: db.buffered() == 15, "more records offered")
        await db.flush_all()
        rounds = r.source.fetches
        await until(lambda: r.source.fetches > rounds + 2, "the loop goes round")
        assert r.source.committed[A] == 30  # at most one commit per COMMIT_INTERVAL_SEC
        r.clock.advance(COMMIT_INTERVAL_SEC)
        await until(lambda: r.source.committed[A] == 45, "the next commit is due")
    finally:
        r.recorder.stop()
        await r.recorder.shutdown()
    assert r.source.committed[A] == 45  # shutdown flushed and committed the rest
    assert db.rows[A] == list(range(45))


async def test_full_buffers_pause_the_consumer_flush_at_once_and_resume() -> None:
    r = rig({A: log_of(A, 150)}, s3=False)  # the limit is 100 records
    await r.recorder.start()
    try:
        await r.source.rebalance(set(), {A})
        db = r.sinks["timescaledb"]
        await until(lambda: A in r.source.paused, "a consumer with full buffers pauses")
        # Nobody calls flush here: full buffers flush at once (not at their size or age
        # trigger), which makes room, and the consumer resumes and reads the rest.
        await until(lambda: len(db.rows.get(A, [])) >= 100, "full buffers flushed at once")
        await until(lambda: A not in r.source.paused, "room resumes the consumer")
        await until(lambda: len(db.rows[A]) + db.buffered() == 150, "the rest fetched")
    finally:
        r.recorder.stop()
        await r.recorder.shutdown()
    assert db.rows[A] == list(range(150))


async def test_full_buffers_keep_feeding_a_partition_that_completes_a_recorded_range() -> None:
    """A's pending lake range [0, 150) was recorded by a pod with larger buffers; it can only be
    flushed whole, and this pod's buffers (100 records) fill before it is. Pausing A with the
    rest wedged the pod (full buffers no flush could empty, /ready 200): A is fed on until the
    range completes, the others stay paused meanwhile, /ready names why."""
    r = rig({A: log_of(A, 130), B: log_of(B, 150)}, db=False, FETCH_MAX_RECORDS=40)
    lake = r.sinks["s3"]
    lake.hold_until[A] = 150  # the range's last 20 records are not produced yet
    await r.recorder.start()
    try:
        await r.source.rebalance(set(), {A, B})
        await until(lambda: lake.ends.get(A) == 130, "A fed to its log end past the limit")
        assert problems(r.recorder).get("buffers") == Problem(
            "buffers_full_completing_range", ((A.topic, A.partition, None),)
        ), problems(r.recorder)
        assert B in r.source.paused and A not in r.source.paused
        r.source.logs[A] += [tick(i) for i in range(130, 150)]
        await until(lambda: lake.rows.get(A) == list(range(150)), "the range completes")
        await until(lambda: lake.rows.get(B, []) + lake.buffers[B] == list(range(150)), "B too")
        await until(lambda: "buffers" not in problems(r.recorder), "ready again")
    finally:
        r.recorder.stop()
        await r.recorder.shutdown()


async def test_progress_of_another_incarnation_of_the_topic_halts_until_reset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The topic was deleted and recreated while the pods were down, and a fast producer wrote
    past the old progress (so "beyond the log end" cannot see it): the stores' topic ID differs
    from the broker's, and the partition halts instead of skipping the new log's first 30."""
    r = rig({A: log_of(A, 50)}, {"timescaledb": {A: 30}, "s3": {A: 30}})
    for sink in r.sinks.values():
        sink.ids[A] = "id-1"
    r.source.topic_id = "id-2"
    r.source.owned, r.source.position[A] = {A}, 0
    await r.recorder.rebalance.on_assigned(r.source, {A})
    assert r.recorder.partitions.status(A) is Status.HALTED
    assert problems(r.recorder)["partitions"] == halted("topic_recreated", A)
    reason = capsys.readouterr().out  # the detail: in the log
    assert "topic ID id-1" in reason and "now id-2" in reason and "reset-progress" in reason
    assert not any(e[1] == "seek" for e in r.events)
    # reset-progress moves the progress and forgets the ID: the new log is taken, the ID learned
    for sink in r.sinks.values():
        sink.stored[A] = 0
        del sink.ids[A]
    await until(lambda: r.clock.sleepers() > 0, "the held-partition retry waits")
    r.clock.advance(HELD_RETRY_MIN_SEC)  # its first round
    await until(lambda: r.recorder.partitions.status(A) is Status.READY, "the retry takes A")
    assert A not in r.source.paused
    assert all(sink.ids[A] == "id-2" for sink in r.sinks.values())


async def test_a_store_learns_the_topic_id_and_an_unknown_one_is_no_halt() -> None:
    r = rig({A: log_of(A, 50), B: log_of(B, 5)}, {"timescaledb": {A: 30}, "s3": {A: 30}})
    r.sinks["s3"].ids[A] = "id-1"
    r.source.owned = {A, B}
    r.source.position.update({A: 0, B: 0})
    await r.recorder.rebalance.on_assigned(r.source, {A, B})
    assert {r.recorder.partitions.status(tp) for tp in (A, B)} == {Status.READY}
    assert r.sinks["timescaledb"].ids == {A: "id-1", B: "id-1"} == r.sinks["s3"].ids
    r2 = rig({A: log_of(A, 50)}, {"timescaledb": {A: 30}, "s3": {A: 30}})
    r2.sinks["s3"].ids[A] = "id-1"
    r2.source.topic_id = None  # a broker without topic IDs: no check, as before
    r2.source.owned, r2.source.position[A] = {A}, 0
    await r2.recorder.rebalance.on_assigned(r2.source, {A})
    assert r2.recorder.partitions.status(A) is Status.READY


async def test_a_vanished_progress_object_halts_instead_of_the_reset_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lake's progress object of B is gone (a lifecycle rule) while the database holds 40
    and the lake holds progress for A: starting B's lake from the reset policy would record
    [0, 40) twice (earliest) or skip to the end (latest). A new partition C (no progress
    anywhere) and a store enabled later (no progress for any partition) are not halts."""
    C = TP(TOPIC, 2)
    logs = {A: log_of(A, 50), B: log_of(B, 50), C: log_of(C, 5)}
    r = rig(logs, {"timescaledb": {A: 50, B: 40}, "s3": {A: 50, B: None}})
    r.source.owned = {A, B, C}
    r.source.position.update({A: 0, B: 0, C: 0})
    await r.recorder.rebalance.on_assigned(r.source, {A, B, C})
    assert r.recorder.partitions.status(B) is Status.HALTED
    assert r.recorder.partitions.status(A) is Status.READY
    assert r.recorder.partitions.status(C) is Status.READY
    assert problems(r.recorder)["partitions"] == halted("progress_vanished", B)
    assert "no progress in s3" in capsys.readouterr().out  # the detail: in the log
    later = rig(logs, {"timescaledb": {A: 50, B: 40}, "s3": {}})
    later.source.owned = {A, B}
    later.source.position.update({A: 0, B: 0})
    await later.recorder.rebalance.on_assigned(later.source, {A, B})
    assert {later.recorder.partitions.status(tp) for tp in (A, B)} == {Status.READY}


async def test_records_read_again_in_the_same_process_are_not_dead_lettered_twice() -> None:
    """A partition re-read before any flush (taken over again after an early rebalance, a
    resync) used to send its dead letters again: the replay of dead letters then recorded
    them twice. Letters this process had acknowledged are not sent again."""
    r = rig({A: log_of(A, 10, bad={2, 5})})
    r.source.owned, r.source.position[A] = {A}, 0
    await r.recorder.rebalance.on_assigned(r.source, {A})
    await r.fetch_and_handle(A)
    assert [d.offset for d in r.dlq.sent] == [2, 5]
    r.source.position[A] = 0  # read again from the stored progress
    await r.fetch_and_handle(A)
    assert [d.offset for d in r.dlq.sent] == [2, 5]


def test_a_recorder_needs_a_sink() -> None:
    with pytest.raises(ValueError, match="both sinks are disabled"):
        rig({}, db=False, s3=False)


def _lost(tp: TP) -> float:
    from recorder.runtime import metrics

    value = metrics.REGISTRY.get_sample_value(
        "datarecorder_records_lost_total",
        {"topic": tp.topic, "partition": str(tp.partition), "reason": "retention"},
    )
    return value or 0.0


async def test_progress_below_the_log_start_resumes_at_the_log_start_and_counts_the_loss() -> None:
    r = rig({A: log_of(A, 50)}, {"timescaledb": {A: 10}, "s3": {A: 12}})
    r.source.starts[A] = 25  # retention deleted 0..24 while the pod was down
    before = _lost(A)
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    assert ("source", "seek", "0", "25") in r.events  # the log start, never the log end
    assert _lost(A) - before == 15
    await r.fetch_and_handle(A)
    assert r.sinks["timescaledb"].buffers[A] == list(range(25, 50))


async def test_a_take_over_that_starts_over_counts_a_lost_range_once() -> None:
    """A second assignment of the partition before anything moved (a rebalance that starts
    over) finds the same range below the log start: it is one loss, counted once."""
    r = rig({A: log_of(A, 50)}, {"timescaledb": {A: 10}, "s3": {A: 10}})
    r.source.starts[A] = 25
    before = _lost(A)
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    await r.recorder.rebalance.on_revoked(r.source, {A})
    await r.recorder.rebalance.on_assigned(r.source, {A})
    assert _lost(A) - before == 15


async def test_a_refused_position_mid_run_goes_on_at_the_log_start_or_halts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for mode in ("resume", "halt"):
        r = rig({A: log_of(A, 50)}, {"timescaledb": {A: 0}, "s3": {A: 0}}, on_truncation=mode)
        r.source.owned = {A}
        await r.recorder.rebalance.on_assigned(r.source, {A})
        r.source.starts[A] = 40
        before = _lost(A)
        await r.recorder.rebalance.reposition(r.source, {A: 30})
        if mode == "resume":
            assert r.source.position[A] == 40 and _lost(A) - before == 10
        else:
            assert r.recorder.partitions.status(A) is Status.HALTED
            assert problems(r.recorder)["partitions"] == halted("log_truncated", A)
            assert "below the log start 40" in capsys.readouterr().out  # in the log
            assert _lost(A) == before


async def test_a_fetch_of_transaction_markers_only_moves_progress_past_them() -> None:
    """read_committed: a commit marker after the last record returns no record; the empty
    batch up to the position lets progress (and the committed offset) pass the marker."""
    r = rig({A: log_of(A, 10)}, {"timescaledb": {A: 0}, "s3": {A: 0}})
    r.source.owned = {A}
    await r.recorder.rebalance.on_assigned(r.source, {A})
    await r.fetch_and_handle(A)
    r.source.ends[A] = 11  # the marker at offset 10
    await r.recorder.intake.handle(r.source, {A: []}, r.recorder.partitions.epochs({A: []}))
    await r.sinks["timescaledb"].flush_all()
    assert r.sinks["timescaledb"].stored[A] == 11


# --- the shutdown deadline in every state (issue 27) -------------------------------------------
HANG_GUARD_SEC = 10.0  # only against a hang of the test itself, not a speed bound


async def test_a_stop_during_start_up_abandons_it_and_reports_where_it_was() -> None:
    from recorder.core.shutdown import ExitCode, exit_code
    from recorder.runtime.retry import Transient, retry_forever

    r = rig({A: log_of(A, 10)})
    attempts: list[int] = []

    async def unreachable() -> None:
        attempts.append(1)
        raise Transient("connection refused")

    async def start() -> None:  # the database sink's start against a port nobody listens on
        await retry_forever("connect", unreachable, 3600)

    setattr(r.sinks["timescaledb"], "stage", "connecting")  # noqa: B010 - a sink's own field
    setattr(r.sinks["timescaledb"], "start", start)  # noqa: B010 - a stuck sink
    run = asyncio.create_task(r.recorder.run())
    await until(lambda: "connect" in r.recorder.state()["waiting_for"], "start-up waits")
    state = r.recorder.state()
    assert state["phase"] == "starting" and state["step"] == "timescaledb: connecting", state
    r.recorder.stop()
    await asyncio.wait_for(run, HANG_GUARD_SEC)
    assert exit_code(r.recorder.outcome()) is ExitCode.NOT_STARTED
    assert r.source.callbacks is None, "never joined the group"
    assert attempts, "the sink's start was tried"


async def test_a_flush_the_deadline_cuts_leaves_the_rest_uncommitted() -> None:
    from recorder.core.shutdown import ExitCode, exit_code

    r = rig({A: log_of(A, 30)})
    r.recorder.settings = r.recorder.settings.model_copy(update={"SHUTDOWN_TIMEOUT_SEC": 0.5})
    await r.recorder.start()
    await r.source.rebalance(set(), {A})
    lake = r.sinks["s3"]
    await until(lambda: lake.buffered() == 30, "the loop offers what it fetches")

    async def outage(tps: Collection[TP] | None = None) -> None:
        await asyncio.Event().wait()  # S3 does not answer

    setattr(lake, "flush_all", outage)  # noqa: B010 - a store down at shutdown
    r.recorder.stop()
    await asyncio.wait_for(r.recorder.shutdown(), HANG_GUARD_SEC)
    outcome = r.recorder.outcome()
    assert outcome.flushed is False and exit_code(outcome) is ExitCode.CUT
    # The database flushed and its progress was committed; the lake's records are left to be
    # replayed (its progress never moved, and Kafka's offset follows the database).
    assert r.sinks["timescaledb"].rows[A] == list(range(30))
    assert r.source.committed[A] == 30
    assert lake.rows.get(A) is None and lake.buffered() == 30


async def test_a_clean_stop_exits_ok() -> None:
    from recorder.core.shutdown import ExitCode, exit_code

    r = rig({A: log_of(A, 5)}, s3=False)
    await r.recorder.start()
    await r.source.rebalance(set(), {A})
    await until(lambda: r.sinks["timescaledb"].buffered() == 5, "offered")
    r.recorder.stop()
    await r.recorder.shutdown()
    assert exit_code(r.recorder.outcome()) is ExitCode.OK


async def test_a_late_revocation_spares_partitions_a_sibling_member_now_owns() -> None:
    """NUM_CONSUMERS=2: member 0's revocation of A arrives after member 1 was given A; the
    buffers and state of A are member 1's, so nothing of A is flushed, revoked or dropped."""
    r = rig({A: log_of(A, 20)})
    sibling = FakeSource(r.events, r.source.logs)
    sibling.index = 1
    r.recorder.sources.append(sibling)
    sibling.owned = {A}
    await r.recorder.rebalance.on_assigned(sibling, {A})
    data = sibling.take(A, 1000)
    await r.recorder.intake.handle(sibling, data, r.recorder.partitions.epochs(data))
    r.events.clear()
    await r.recorder.rebalance.on_revoked(r.source, {A})
    assert r.events == []
    assert r.recorder.partitions.status(A) is Status.READY
    assert r.sinks["timescaledb"].buffers[A] == list(range(20))


async def test_a_sibling_given_the_partition_during_a_slow_revocation_keeps_it() -> None:
    """NUM_CONSUMERS=2: member 0's revocation of A waits on its flush; meanwhile member 1 is
    given A and takes it over. When member 0's revocation goes on, A's buffers, state and
    records are member 1's: nothing of A is revoked, and what member 0 still fetched of A
    from its old position is not offered."""
    r = rig({A: log_of(A, 20)})
    r.source.owned, r.source.position[A] = {A}, 0
    await r.recorder.rebalance.on_assigned(r.source, {A})
    await r.fetch_and_handle(A, 5)
    gate = asyncio.Event()
    for sink in r.sinks.values():
        sink.gate = gate
    revoking = asyncio.create_task(r.recorder.rebalance.on_revoked(r.source, {A}))
    await asyncio.sleep(0)  # the revocation now waits on the flush
    sibling = FakeSource(r.events, r.source.logs)
    sibling.index = 1
    r.recorder.sources.append(sibling)
    sibling.owned = {A}
    sibling.position[A] = 0
    await r.recorder.rebalance.on_assigned(sibling, {A})
    gate.set()
    await revoking
    assert r.recorder.partitions.status(A) is Status.READY
    assert not any(e[1] == "revoke" and "0" in e[2:] for e in r.events)
    stale = {A: [m for m in r.source.logs[A] if m.offset >= 5]}  # member 0's old position
    await r.recorder.intake.handle(r.source, stale, r.recorder.partitions.epochs(stale))
    assert r.sinks["timescaledb"].buffers[A] == []
    data = sibling.take(A, 1000)
    await r.recorder.intake.handle(sibling, data, r.recorder.partitions.epochs(data))
    assert r.sinks["timescaledb"].buffers[A] == list(range(5, 20))


async def test_a_partition_without_a_position_is_taken_over_or_held_never_crashing() -> None:
    """The consumer never resets on its own: a partition with no position (PositionLost with
    None) is taken over; when its progress cannot be loaded it is held, and a held one is
    left to the held-partition retry (before: CorruptProgress escaped the consumer loop and
    the process exited)."""
    r = rig({A: log_of(A, 10)}, {"timescaledb": {A: 0}, "s3": {A: 0}})
    r.source.owned = {A}
    r.sinks["s3"].corrupt = "progress object is corrupt"
    await r.recorder.rebalance.on_assigned(r.source, {A})
    assert r.recorder.partitions.is_held(A)
    r.events.clear()
    await r.recorder.rebalance.reposition(r.source, {A: None})  # held: nothing to do here
    assert r.events == []
    r.recorder.partitions.assign({A})  # not held any more, still unloadable
    await r.recorder.rebalance.reposition(r.source, {A: None})
    assert r.recorder.partitions.is_held(A)


async def test_a_consumer_that_stops_fetching_is_unready_after_the_stall_limit() -> None:
    from recorder.http import consumer_code

    r = rig({A: log_of(A, 5)})
    r.recorder.health.started = True
    r.recorder.health.fetched()
    r.clock.advance(STALLED_FETCH_SEC - 1)
    assert consumer_code(r.recorder.health) is None
    r.clock.advance(1)
    assert consumer_code(r.recorder.health) == "consumer_not_fetching"
    r.recorder.health.fetched()
    assert consumer_code(r.recorder.health) is None


async def test_refused_dead_letters_pause_the_partition_until_the_backoff_ends() -> None:
    """The loop keeps a partition whose dead letters were refused paused while its backoff
    runs (on the recorder's clock), then fetches it again from its stored progress."""
    r = rig({A: log_of(A, 10, bad={3}), B: log_of(B, 5)}, s3=False)
    r.dlq.refuse = "RecordTooLargeError"
    await r.recorder.start()
    try:
        await r.source.rebalance(set(), {A, B})
        db = r.sinks["timescaledb"]
        await until(lambda: A in r.source.paused, "A paused for its backoff")
        await until(lambda: db.buffers.get(B) == list(range(5)), "B goes on meanwhile")
        rounds = r.source.fetches
        await until(lambda: r.source.fetches > rounds + 2, "the loop goes round")
        assert A in r.source.paused and db.buffers[A] == [] and r.dlq.sent == []
        r.dlq.refuse = None
        r.clock.advance(DEAD_LETTER_BACKOFF_SEC)
        await until(lambda: db.buffers[A] == [0, 1, 2, 4, 5, 6, 7, 8, 9], "A fed again")
        assert [d.offset for d in r.dlq.sent] == [3] and A not in r.source.paused
        assert dead_letter_part(r.recorder.partitions) == (True, "")
    finally:
        r.recorder.stop()
        await r.recorder.shutdown()
