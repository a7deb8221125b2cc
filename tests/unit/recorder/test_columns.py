"""decode_batch (recorder.core.columns): the fast columnar path and the per-record fallback
agree on every record, and a bad record costs only itself (with its reason for the DLQ)."""

from __future__ import annotations

import msgspec
import pyarrow as pa

from recorder.core.columns import _per_record, decode_batch
from recorder.core.records import Limits
from recorder.runtime.settings import TopicKind

LIMITS = Limits(1024)
TS_MS = 1764133200000


def _ticks(n: int) -> list[bytes]:
    return [
        msgspec.json.encode(
            {
                "symbol": f"S{i % 3}",
                "timestamp": TS_MS * 1_000_000 + i,
                "price": 10.0 + i,
                "volume": i,
                "change": 0.5,
                "change_rate": 0.1,
            }
        )
        for i in range(n)
    ]


def _books(n: int) -> list[bytes]:
    return [
        msgspec.json.encode(
            {
                "symbol": "005930",
                "timestamp": TS_MS * 1_000_000 + i,
                "bids": [{"price": 70900.0, "quantity": 1200}],
                "asks": [{"price": 71000.0, "quantity": 800 + i}],
            }
        )
        for i in range(n)
    ]


def test_fast_path_equals_the_per_record_decoder() -> None:
    for kind, values in ((TopicKind.TICK, _ticks(50)), (TopicKind.ORDERBOOK, _books(20))):
        offsets = list(range(100, 100 + len(values)))
        stamps = [TS_MS] * len(values)
        fast, rejected = decode_batch(kind, values, offsets, stamps, LIMITS)
        slow, slow_rejected = _per_record(kind, values, offsets, stamps, LIMITS)
        assert rejected == slow_rejected == []
        assert fast.equals(slow), kind
        assert fast.column("offset").to_pylist() == offsets


def test_order_book_levels_kept_as_json_text_and_typed() -> None:
    table, _ = decode_batch(TopicKind.ORDERBOOK, _books(1), [7], [TS_MS], LIMITS)
    assert table.column("bids").to_pylist() == ['[{"price":70900.0,"quantity":1200.0}]']
    assert table.column("asks").to_pylist() == ['[{"price":71000.0,"quantity":800.0}]']
    assert table.column("bid_levels").to_pylist() == [[{"price": 70900.0, "quantity": 1200.0}]]


def test_a_bad_record_is_rejected_with_its_reason_and_the_rest_kept() -> None:
    values: list[bytes | None] = list(_ticks(10))
    values[3] = b'{"symbol": "X", "price": "not a number"}'
    values[6] = None
    offsets = list(range(10))
    table, rejected = decode_batch(TopicKind.TICK, values, offsets, [TS_MS] * 10, LIMITS)
    assert [i for i, _ in rejected] == [3, 6]
    assert all(exc.reason for _, exc in rejected)
    assert table.column("offset").to_pylist() == [0, 1, 2, 4, 5, 7, 8, 9]
    assert isinstance(table, pa.Table) and table.num_rows == 8
