"""The hot-path shortcuts taken for speed give exactly what the plain code gives.

Owns the equivalence checks of the benchmark-driven optimisations (pure, no I/O): the batch
decode against the per-record decode, the vectorised rollups against their definition, the
binary COPY stream against PostgreSQL's documented layout, and the bench's own steps."""

from __future__ import annotations

import io
import json
import random
import struct

import pyarrow.parquet as pq
import pytest

from recorder.core.columns import decode_batch, from_rows
from recorder.core.records import Limits, RecordError, TickRow, decode
from recorder.core.rollups import ROLLUPS, aggregate, bars
from recorder.runtime.settings import TopicKind
from recorder.sinks.lake.parquet import parquet_table, write_parquet
from recorder.sinks.timescale.encode import HEADER, PG_EPOCH_US, TRAILER, copy_bytes
from recorder.sinks.timescale.service import rollup_bars

KAFKA_MS = 1_764_133_200_000


def _ticks(n: int, seed: int) -> list[TickRow]:
    rng = random.Random(seed)
    t = 1_764_133_200_000_000_000
    out = []
    for _ in range(n):
        # Out-of-order and equal timestamps, several symbols and hours: the cases that decide
        # which tick is a bucket's open and close.
        t += rng.choice((0, 0, 1, 7_000_000, 61_000_000_000, -3_000_000_000))
        price = round(rng.uniform(1, 200), 2)
        out.append(TickRow(t, f"S{rng.randrange(5)}", price, rng.randrange(0, 900), None, None))
    return out


def test_vectorised_rollups_equal_aggregating_each_bucket_from_the_ticks() -> None:
    for seed in range(20):
        ticks = _ticks(3000, seed)
        table = from_rows(TopicKind.TICK, list(range(len(ticks))), ticks)
        got = rollup_bars(table)
        assert set(got) == set(ROLLUPS)
        for view, bucket_ns in ROLLUPS.items():
            assert got[view].rows() == aggregate(ticks, bucket_ns), (seed, view)


def test_bars_of_nothing_is_nothing() -> None:
    table = from_rows(TopicKind.TICK, [], [])
    b = bars(
        table.column("time_ns").to_numpy(),
        table.column("symbol").combine_chunks(),
        table.column("price").to_numpy(),
        table.column("volume").to_numpy(),
        60 * 10**9,
    )
    assert len(b) == 0 and b.rows() == []


def _tick_values(rng: random.Random, n: int) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(n):
        record: dict[str, object] = {
            "symbol": rng.choice(["005930", "AAPL", "한국", "x" * 32]),
            "price": rng.choice([71000.0, 1, 0.01]),
            "volume": rng.randrange(0, 1000),
        }
        if rng.random() < 0.5:
            record["change"] = rng.choice([None, -1.5, 2])
        if rng.random() < 0.5:
            record["change_rate"] = 0.71
        stamp = rng.random()
        if stamp < 0.6:
            record["timestamp"] = KAFKA_MS * 1_000_000 + i
        elif stamp < 0.7:
            record["timestamp"] = "2025-11-26T05:00:00.123456789Z"
        out.append(json.dumps(record).encode())
    return out


BAD: list[bytes | None] = [
    None,
    b"",
    b"not json",
    b"[1,2]",
    b'{"symbol":"","price":1,"volume":1}',
    b'{"symbol":"A","price":-1,"volume":1}',
    b'{"symbol":"A","price":1,"volume":-1}',
    b'{"symbol":"A","price":1,"volume":1,"change":NaN}',
    b'{"symbol":"A","price":1e999,"volume":1}',
    b'{"symbol":"A\\u0000","price":1,"volume":1}',
    b'{"symbol":"A","price":1,"volume":1,"timestamp":1}',
    b'{"symbol":"A","price":1,"volume":1,"timestamp":"yesterday"}',
    b'{"symbol":"A",\n"price":1,"volume":1}',  # valid, with a newline between tokens
    b'{"symbol":"A","price":1,"volume":1}{"symbol":"B","price":1,"volume":1}',
    b"\xff\xfe",
]


@pytest.mark.parametrize("seed", range(10))
def test_batch_decode_accepts_and_rejects_exactly_as_the_per_record_decode(seed: int) -> None:
    rng = random.Random(seed)
    values = _tick_values(rng, 200)
    if seed % 2:  # half the batches hold a bad record somewhere: the per-record fallback
        for _ in range(3):
            values.insert(rng.randrange(len(values)), rng.choice(BAD))
    offsets = [1000 + i for i in range(len(values))]
    stamps = [KAFKA_MS] * len(values)
    limits = Limits()
    table, rejected = decode_batch(TopicKind.TICK, values, offsets, stamps, limits)
    want_rows, want_offsets, want_rejected = [], [], []
    for i, v in enumerate(values):
        try:
            want_rows.append(decode(TopicKind.TICK, v, KAFKA_MS, limits))
            want_offsets.append(offsets[i])
        except RecordError as exc:
            want_rejected.append((i, exc.reason, str(exc)))
    assert table.equals(from_rows(TopicKind.TICK, want_offsets, want_rows))
    assert [(i, e.reason, str(e)) for i, e in rejected] == want_rejected


def test_order_book_batch_keeps_levels_as_json_text_and_typed() -> None:
    book = {"symbol": "005930", "timestamp": KAFKA_MS * 1_000_000,
            "bids": [{"price": 70900.0, "quantity": 1200}, {"price": 70800, "quantity": 0}],
            "asks": []}  # fmt: skip
    bad = dict(book, asks=[{"price": 0, "quantity": 1}])
    values: list[bytes | None] = [json.dumps(book).encode(), json.dumps(bad).encode()]
    table, rejected = decode_batch(TopicKind.ORDERBOOK, values, [5, 6], [KAFKA_MS] * 2, Limits())
    assert [(i, e.reason) for i, e in rejected] == [(1, "out_of_range")]
    assert "asks[0].price" in str(rejected[0][1])
    row = table.to_pylist()[0]
    assert row["bids"] == '[{"price":70900.0,"quantity":1200.0},{"price":70800.0,"quantity":0.0}]'
    assert row["asks"] == "[]" and row["offset"] == 5
    assert row["bid_levels"] == [
        {"price": 70900.0, "quantity": 1200.0},
        {"price": 70800.0, "quantity": 0.0},
    ]
    good, none = decode_batch(TopicKind.ORDERBOOK, values[:1], [5], [KAFKA_MS], Limits())
    assert not none and good.equals(table)  # the fast path gives what the fallback gave


def _read_copy(data: bytes) -> list[list[bytes | None]]:
    """Parse a binary COPY stream (PostgreSQL docs, "Binary Format") into raw fields."""
    assert data.startswith(HEADER) and data.endswith(TRAILER)
    pos, rows = len(HEADER), []
    while True:
        (count,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if count == -1:
            break
        fields: list[bytes | None] = []
        for _ in range(count):
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if size == -1:
                fields.append(None)
            else:
                fields.append(data[pos : pos + size])
                pos += size
        rows.append(fields)
    assert pos == len(data)
    return rows


def test_binary_copy_of_ticks_follows_the_wire_format() -> None:
    rows = [
        TickRow(1_764_133_200_123_456_789, "005930", 71000.0, 120, 500.0, None),
        TickRow(946_684_800_000_000_999, "한국", 0.5, 0, None, -0.25),
    ]
    parsed = _read_copy(copy_bytes(from_rows(TopicKind.TICK, [0, 1], rows), TopicKind.TICK))
    assert len(parsed) == 2
    for fields, row in zip(parsed, rows, strict=True):
        assert struct.unpack(">q", fields[0] or b"")[0] == row.time_ns // 1000 - PG_EPOCH_US
        assert (fields[1] or b"").decode() == row.symbol
        assert struct.unpack(">d", fields[2] or b"")[0] == row.price
        assert struct.unpack(">q", fields[3] or b"")[0] == row.volume
        for got, want in ((fields[4], row.change), (fields[5], row.change_rate)):
            assert (None if got is None else struct.unpack(">d", got)[0]) == want
    assert _read_copy(copy_bytes(from_rows(TopicKind.TICK, [], []), TopicKind.TICK)) == []


def test_binary_copy_of_order_books_sends_the_json_text_as_jsonb() -> None:
    value = b'{"symbol":"A","timestamp":1764133200000000000,"bids":[{"price":1,"quantity":2}],"asks":[]}'
    table, _ = decode_batch(TopicKind.ORDERBOOK, [value, value], [0, 1], [KAFKA_MS] * 2, Limits())
    parsed = _read_copy(copy_bytes(table, TopicKind.ORDERBOOK))
    assert parsed[1][2] == b'\x01[{"price":1.0,"quantity":2.0}]' and parsed[1][3] == b"\x01[]"
    assert parsed[0][1] == b"A"


def test_parquet_from_columns_is_the_same_bytes_however_the_batch_was_chunked() -> None:
    ticks = _ticks(500, 3)
    table = from_rows(TopicKind.TICK, list(range(500)), ticks)
    import pyarrow as pa

    chunked = pa.concat_tables([table.slice(0, 123), table.slice(123, 300), table.slice(423)])
    one, two = io.BytesIO(), io.BytesIO()
    write_parquet(one, TopicKind.TICK, table, "ns", "typed", 100)
    write_parquet(two, TopicKind.TICK, chunked, "ns", "typed", 100)
    assert one.getvalue() == two.getvalue()
    back = pq.read_table(io.BytesIO(one.getvalue()))
    assert back.column("price").to_pylist() == [t.price for t in ticks]
    assert pq.ParquetFile(io.BytesIO(one.getvalue())).metadata.num_row_groups == 5


@pytest.mark.parametrize("kind", [TopicKind.TICK, TopicKind.ORDERBOOK])
def test_parquet_dictionary_options_change_the_encoding_never_the_rows(kind: TopicKind) -> None:
    """`symbol` (what new ranges record) dictionary-encodes the symbol column only; `all` is the
    encoding releases before the option wrote, byte for byte, so a range they recorded is
    completed with their bytes (rule 4); both read back as the same rows."""
    if kind is TopicKind.TICK:
        table = from_rows(kind, list(range(300)), _ticks(300, 3))
    else:
        value = b'{"symbol":"A","timestamp":1764133200000000000,"bids":[{"price":1,"quantity":2}],"asks":[]}'
        table, _ = decode_batch(kind, [value] * 300, list(range(300)), [KAFKA_MS] * 300, Limits())
    out = {d: io.BytesIO() for d in ("all", "symbol")}
    for dictionary, sink in out.items():
        write_parquet(sink, kind, table, "ns", "typed", 100, dictionary)  # type: ignore[arg-type]
    before = io.BytesIO()
    whole = parquet_table(kind, table.combine_chunks(), "ns", "typed")
    with pq.ParquetWriter(before, whole.schema, compression="snappy") as writer:
        writer.write_table(whole, row_group_size=100)
    assert out["all"].getvalue() == before.getvalue()
    assert pq.read_table(io.BytesIO(out["symbol"].getvalue())).equals(
        pq.read_table(io.BytesIO(out["all"].getvalue()))
    )
    meta = pq.ParquetFile(io.BytesIO(out["symbol"].getvalue())).metadata.row_group(0)
    with_dictionary = {
        meta.column(i).path_in_schema
        for i in range(meta.num_columns)
        if meta.column(i).has_dictionary_page
    }
    assert with_dictionary == {"symbol"}


def test_the_benchmarks_decode_and_encode_steps_run_the_recorders_code() -> None:
    """bench/scenarios calls the recorder's decode and Parquet encoder directly (it broke once
    when decode's signature changed: a signature change must fail here, not in CI's bench)."""
    from bench.scenarios import Backlog, decode_backlog, parquet_ceiling

    value = b'{"symbol":"AAA","price":1.5,"volume":3,"timestamp":1764133200123456789}'
    book = b'{"symbol":"B","timestamp":1764133200123456789,"bids":[],"asks":[]}'
    backlog, rate = decode_backlog(
        [(TopicKind.TICK, 1764133200123, value), (TopicKind.ORDERBOOK, 1764133200123, book)]
    )
    assert isinstance(backlog, Backlog) and rate > 0
    assert [r.symbol for r in backlog.ticks] == ["AAA"]
    assert backlog.tick_columns[0].column("symbol").to_pylist() == ["AAA"]
    assert backlog.book_columns[0].num_rows == 1
    assert parquet_ceiling(backlog) > 0
