"""The one sink driver over a fake store: written, fenced, failed (backoff), abandoned, resync,
lanes, health. The stores' own writes are tested on their real servers (tests/integration)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

import pyarrow as pa

from recorder.core.backoff import Backoff
from recorder.core.batching import Batch
from recorder.core.offsets import TP
from recorder.sinks.base import NOT_ANSWERING
from recorder.sinks.driver import BufferedSink, Fence, Outcome, Schedule, Written

A, B = TP("t", 0), TP("t", 1)


def rows(first: int, n: int) -> pa.Table:
    return pa.table({"offset": pa.array(range(first, first + n), pa.int64())})


class FakeStore:
    """Answers each write with `answer(batches)`; `gate` holds writes while it is set."""

    def __init__(self, lanes: int = 0) -> None:
        self.lanes = lanes  # 0: a lane per partition
        self.writes: list[dict[TP, tuple[int | None, int]]] = []
        self.answer: Callable[[dict[TP, Batch]], Written] = lambda b: Written(
            dict.fromkeys(b, Outcome.WRITTEN)
        )
        self.gate: asyncio.Event | None = None
        self.down = False
        self.wrote = asyncio.Event()

    async def started(self, n: int) -> None:
        """Wait until `n` writes have started."""
        while len(self.writes) < n:
            self.wrote.clear()
            await asyncio.wait_for(self.wrote.wait(), 5)

    def lane(self, tp: TP) -> Hashable:
        return tp.partition % self.lanes if self.lanes else tp

    def recorded_end(self, tp: TP, start: int | None) -> int | None:
        return None

    async def write(self, batches: dict[TP, Batch]) -> Written:
        self.writes.append({tp: (b.start, b.end) for tp, b in batches.items()})
        self.wrote.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(batches)

    async def probe(self) -> None:
        if self.down:
            raise ConnectionError("down")


class Harness:
    def __init__(self, store: FakeStore, max_rows: int = 10, failed_first: float = 0.01) -> None:
        self.progress: list[tuple[TP, int]] = []
        self.resyncs: list[TP] = []
        schedule = Schedule(max_rows, 60.0, Backoff(failed_first, 1.0))
        self.sink = BufferedSink(
            "fake",
            store,
            schedule,
            lambda tp, end: self.progress.append((tp, end)),
            self.resyncs.append,
        )


async def test_a_full_batch_is_written_and_its_progress_reported() -> None:
    store = FakeStore()
    h = Harness(store)
    h.sink._start_flushing()
    try:
        h.sink.assign({A: 0})
        h.sink.offer(A, rows(0, 10), 10)  # full: written without a flush_all
        await h.sink.flush_all([A])
        assert store.writes == [{A: (0, 10)}]
        assert h.progress == [(A, 10)] and h.sink.progress() == {A: 10}
        assert h.sink.health().ok and h.sink.buffered() == 0
    finally:
        await h.sink._stop_flushing()


async def test_a_fenced_batch_resyncs_from_the_stored_progress() -> None:
    store = FakeStore()
    store.answer = lambda b: Written({A: Outcome.FENCED}, {A: Fence(100, {"stored": 100})})
    h = Harness(store)
    h.sink._start_flushing()
    try:
        h.sink.assign({A: 0})
        h.sink.offer(A, rows(0, 5), 5)
        await h.sink.flush_all([A])
        assert h.progress == [] and h.resyncs == [A]
        assert h.sink.progress() == {A: 100}  # fed again from the other owner's progress
        assert h.sink.health().ok  # a zombie's dropped batch is not an outage
    finally:
        await h.sink._stop_flushing()


async def test_a_failed_write_backs_off_in_flight_then_resyncs_and_reports_why() -> None:
    store = FakeStore()

    def refuse(_b: dict[TP, Batch]) -> Written:
        raise PermissionError("write refused")

    store.answer = refuse
    h = Harness(store, failed_first=0.05)
    h.sink._start_flushing()
    try:
        h.sink.assign({A: 0})
        h.sink.offer(A, rows(0, 5), 5)
        await h.sink.flush_all([A])  # returns once the failed batch left the flight
        assert h.resyncs == [A] and h.sink.progress() == {A: 0} and h.progress == []
        health = h.sink.health()
        assert not health.ok and "PermissionError: write refused" in health.reason
        assert not await h.sink.check_health()  # answering is not enough while writes fail
        assert h.sink._failures == {A: 1}
        store.answer = lambda b: Written(dict.fromkeys(b, Outcome.WRITTEN))
        h.sink.offer(A, rows(0, 5), 5)  # fed again from progress
        await h.sink.flush_all([A])
        assert h.progress == [(A, 5)] and h.sink.health().ok and h.sink._failures == {}
    finally:
        await h.sink._stop_flushing()


async def test_consecutive_failures_wait_longer_each_time() -> None:
    store = FakeStore()

    def refuse(_b: dict[TP, Batch]) -> Written:
        raise PermissionError("no")

    store.answer = refuse
    h = Harness(store, failed_first=0.02)
    waits: list[float] = []
    original = h.sink._flush_failed

    def record(batches: dict[TP, Batch], exc: Exception, wait: float) -> None:
        waits.append(wait)
        original(batches, exc, wait)

    h.sink._flush_failed = record  # type: ignore[method-assign]
    h.sink._start_flushing()
    try:
        h.sink.assign({A: 0})
        for _ in range(3):
            h.sink.offer(A, rows(0, 5), 5)
            await h.sink.flush_all([A])
        assert waits == [0.02, 0.04, 0.08]
    finally:
        await h.sink._stop_flushing()


async def test_abandon_cancels_the_write_and_resyncs_its_other_partitions() -> None:
    store = FakeStore(lanes=1)  # A and B in one write, as in one database transaction
    store.gate = asyncio.Event()
    h = Harness(store)
    h.sink._start_flushing()
    try:
        h.sink.assign({A: 0, B: 0})
        h.sink.offer(A, rows(0, 5), 5)
        h.sink.offer(B, rows(0, 10), 10)  # B full: the lane takes both
        await store.started(1)
        assert store.writes == [{A: (0, 5), B: (0, 10)}]
        await h.sink.abandon([A])
        assert h.resyncs == [B]  # B fed again from its progress; A is being given up
        assert h.progress == [] and h.sink.buffered() == 0
        await asyncio.wait_for(h.sink.flush_all([A]), 1)  # nothing left to wait for
        h.sink.offer(A, rows(5, 10), 15)  # abandoned: no new write until revoked
        await asyncio.sleep(0.05)
        assert len(store.writes) == 1
        h.sink.revoke([A])
        assert A not in h.sink.progress()
    finally:
        await h.sink._stop_flushing()


async def test_a_lane_writes_one_batch_at_a_time() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    h = Harness(store)
    h.sink._start_flushing()
    try:
        h.sink.assign({A: 0, B: 0})
        h.sink.offer(A, rows(0, 10), 10)
        h.sink.offer(B, rows(0, 10), 10)
        await store.started(2)
        h.sink.offer(A, rows(10, 10), 20)  # due, but A's lane is still writing
        await asyncio.sleep(0.05)
        assert len(store.writes) == 2  # the two lanes, once each
        store.gate.set()
        await h.sink.flush_all()
        assert {A: (10, 20)} in store.writes and h.sink.progress() == {A: 20, B: 10}
    finally:
        await h.sink._stop_flushing()


async def test_a_store_that_does_not_answer_says_so() -> None:
    store = FakeStore()
    h = Harness(store)
    assert not await h.sink.check_health()  # not started
    h.sink._start_flushing()
    try:
        store.down = True
        assert not await h.sink.check_health()
        assert h.sink.health().reason == NOT_ANSWERING
        store.down = False
        assert await h.sink.check_health() and h.sink.health().ok
    finally:
        await h.sink._stop_flushing()
