"""The sinks' shared buffer core: bookkeeping, and a flush that waits on changes, not a timer."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pyarrow as pa
import pytest

from recorder.core.columns import from_rows
from recorder.core.offsets import TP
from recorder.core.records import TickRow
from recorder.runtime.settings import TopicKind
from recorder.sinks.buffer import Buffers

A, B = TP("t.tick", 0), TP("t.tick", 1)


def ticks(offsets: list[int]) -> pa.Table:
    rows = [TickRow(10**18 + o, "A", 1.0, o, None, None) for o in offsets]
    return from_rows(TopicKind.TICK, offsets, rows)


def test_bookkeeping_counts_open_and_in_flight_rows_and_bytes() -> None:
    buffers = Buffers()
    buffers.assign({A: 10, B: None})
    assert buffers.offer(TP("other", 0), ticks([1]), 2, now=0.0) is None  # not ours
    batch = buffers.offer(A, ticks([10, 11, 12]), 13, now=0.0)
    assert batch is not None and batch.count == 3
    buffers.offer(B, ticks([0]), 1, now=0.0)
    assert buffers.buffered() == 4 and buffers.buffered_bytes() > 0
    open_a = buffers.get(A)
    assert open_a is not None
    buffers.flying(A, open_a.take())
    assert buffers.buffered() == 4  # in flight still counts until it lands
    buffers.landed(A)
    assert buffers.buffered() == 1
    buffers.restart(B, None)
    assert buffers.buffered() == 0
    buffers.revoke([A, B])
    assert list(buffers) == [] and buffers.get(A) is None


async def test_flush_returns_when_nothing_is_pending() -> None:
    buffers = Buffers()
    buffers.assign({A: 0})
    kicked: list[Collection[TP]] = []
    await asyncio.wait_for(buffers.flush(None, lambda tp: False, kicked.append), 1)
    assert kicked == []


async def test_flush_waits_for_the_flusher_and_wakes_on_its_landing() -> None:
    """A flusher that lands the batch wakes the waiting flush at once; the pending partitions
    are marked forced and the flusher kicked (the sink flushes them whether due or not)."""
    buffers = Buffers()
    buffers.assign({A: 0, B: 0})
    buffers.offer(A, ticks([0, 1]), 2, now=0.0)
    kicked = asyncio.Event()

    def pending(tp: TP) -> bool:
        buffer = buffers.get(tp)
        return (buffer is not None and buffer.batch.advanced) or tp in buffers.in_flight

    def kick(tps: Collection[TP]) -> None:
        assert set(tps) == {A} and buffers.force == {A}
        kicked.set()

    async def flusher() -> None:
        await kicked.wait()
        buffer = buffers.get(A)
        assert buffer is not None
        buffers.flying(A, buffer.take())
        await asyncio.sleep(0)
        buffers.landed(A)

    task = asyncio.create_task(flusher())
    await asyncio.wait_for(buffers.flush(None, pending, kick), 1)
    await task
    assert buffers.buffered() == 0 and buffers.force == set()


async def test_flush_of_a_revoked_partition_ends_with_the_revocation() -> None:
    buffers = Buffers()
    buffers.assign({A: 0})
    buffers.offer(A, ticks([0]), 1, now=0.0)
    waiting = asyncio.create_task(buffers.flush([A], lambda tp: tp in buffers, lambda tps: None))
    await asyncio.sleep(0)
    assert not waiting.done()  # no timer wakes it: only a change does
    buffers.revoke([A])
    await asyncio.wait_for(waiting, 1)


@pytest.mark.parametrize("change", ["landed", "restart", "changed"])
async def test_every_change_wakes_the_waiters(change: str) -> None:
    buffers = Buffers()
    buffers.assign({A: 0})
    state = {"pending": True}
    waiting = asyncio.create_task(buffers.flush([A], lambda tp: state["pending"], lambda t: None))
    await asyncio.sleep(0)
    state["pending"] = False
    {"landed": lambda: buffers.landed(A), "restart": lambda: buffers.restart(A, 0),
     "changed": buffers.changed}[change]()  # fmt: skip
    await asyncio.wait_for(waiting, 1)
