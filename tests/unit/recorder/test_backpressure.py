"""Pure rules of recorder.core.backpressure and the DLQ sizing of recorder.kafka.dlq (fake clock)."""

from __future__ import annotations

from types import SimpleNamespace

from recorder.core import backpressure as bp
from recorder.core.columns import ARROW_RSS_FACTOR, TABLE_BYTES, from_rows, table_bytes
from recorder.core.offsets import TP
from recorder.core.records import Level, OrderBookRow, TickRow
from recorder.kafka.dlq import HEADROOM_BYTES, dlq_limit, max_message_bytes
from recorder.runtime.settings import TopicKind

A, B, C = TP("t", 0), TP("t", 1), TP("t", 2)


def test_backoff_doubles_from_half_a_second_up_to_the_cap() -> None:
    first = bp.block(None, 100.0, "refused", max_backoff=5.0)
    assert (first.retry_at, first.failures) == (100.5, 1)
    later = first
    delays = []
    for _ in range(6):
        later = bp.block(later, 200.0, "refused", max_backoff=5.0)
        delays.append(later.retry_at - 200.0)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_whichever_limit_comes_first() -> None:
    assert bp.is_full(10, 0, 10, 100)
    assert bp.is_full(1, 100, 10, 100)
    assert not bp.is_full(9, 99, 10, 100)


def test_row_estimate_grows_with_levels() -> None:
    tick = from_rows(TopicKind.TICK, [0], [TickRow(1, "A", 1.0, 1, None, None)])
    level = Level(1.0, 1.0)
    book = from_rows(
        TopicKind.ORDERBOOK, [0], [OrderBookRow(1, "A", [level] * 1000, [level] * 1000)]
    )
    assert bp.row_bytes(tick) == ARROW_RSS_FACTOR * tick.nbytes
    # 2,000 levels of two doubles (typed) plus their JSON text: tens of KB, not a tick's 100 B.
    assert bp.row_bytes(book) > 2000 * 16 * ARROW_RSS_FACTOR > 100 * bp.row_bytes(tick)
    assert table_bytes(tick) == bp.row_bytes(tick) + TABLE_BYTES
    assert bp.row_bytes(from_rows(TopicKind.TICK, [], [])) == 0


def test_max_message_bytes_from_describe_configs_responses() -> None:
    response = SimpleNamespace(
        resources=[
            (0, None, 2, "market.tick", [("max.message.bytes", "2097152", False, 5, False, [])]),
            (3, "unknown topic", 2, "gone", []),
        ]
    )
    assert max_message_bytes([response]) == {"market.tick": 2_097_152}
    assert dlq_limit(2_097_152) == 2_097_152 + HEADROOM_BYTES


def test_buffer_bytes_default_follows_the_memory_limit() -> None:
    gib = 1024 * bp.MIB
    assert bp.parse_memory_max("1073741824\n") == gib
    assert bp.parse_memory_max("max\n") is None
    assert bp.parse_memory_max("9223372036854771712") is None  # cgroup v1: no limit
    assert bp.parse_memory_max(None) is None
    assert bp.buffer_bytes_limit(0, gib) == 256 * bp.MIB
    assert bp.buffer_bytes_limit(0, 16 * gib) == gib  # at most /tmp's size limit
    assert bp.buffer_bytes_limit(0, None) == bp.DEFAULT_BUFFER_BYTES
    assert bp.buffer_bytes_limit(12345, gib) == 12345  # an explicit setting wins


def test_fetch_is_sized_to_the_bytes_left() -> None:
    assert bp.fetch_limit(5000, 100 * bp.MIB, 0) == 5000  # nothing seen yet
    assert bp.fetch_limit(5000, 100 * bp.MIB, 320) == 5000
    assert bp.fetch_limit(5000, 21_238_400, 212_384) == 100
    assert bp.fetch_limit(5000, 0, 212_384) == 1  # always moves
