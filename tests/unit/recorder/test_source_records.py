"""Our consumers read records as the record batch holds them (recorder/kafka/source.py): the hook
into aiokafka's fetcher must still be called with records whose offset, timestamp, key and
value are the ones sent, aborted transactions still skipped, and other consumers must still
get ConsumerRecords. Generated batches; the reference is what was appended."""

from __future__ import annotations

from typing import Any

from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.kafka import source

TP = TopicPartition("t", 0)
records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=20)),  # key
        st.one_of(st.none(), st.binary(max_size=60)),  # value
        st.integers(0, 2**62),  # timestamp (a batch stores -1, "none", relative to its first)
    ),
    min_size=1,
    max_size=30,
)


def _batch(base: int, recs: list[tuple[bytes | None, bytes | None, int]], pid: int = -1) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=int(pid >= 0),
        producer_id=pid,
        producer_epoch=0 if pid >= 0 else -1,
        base_sequence=0 if pid >= 0 else -1,
        batch_size=1 << 24,
    )
    for i, (key, value, ts) in enumerate(recs):
        builder.append(i, timestamp=ts, key=key, value=value, headers=[])
    data = builder.build()
    data[0:8] = base.to_bytes(8, "big")
    return bytes(data)


def _read(data: bytes, deserializer: object, aborted: list[tuple[int, int]]) -> list[Any]:
    return list(
        PartitionRecords(
            TP, MemoryRecords(data), aborted, 0, None, deserializer, False, READ_COMMITTED
        )
    )


@settings(max_examples=60, deadline=None)
@given(records, records)
def test_our_consumers_get_the_records_as_sent(
    committed: list[tuple[bytes | None, bytes | None, int]],
    aborted: list[tuple[bytes | None, bytes | None, int]],
) -> None:
    # An aborted transaction's batch (producer 7) first, then a plain batch after it.
    data = _batch(0, aborted, pid=7) + _batch(len(aborted), committed)
    got = _read(data, source._lean, [(7, 0)])
    assert [(r.offset, r.key, r.value, r.timestamp) for r in got] == [
        (len(aborted) + i, k, v, ts) for i, (k, v, ts) in enumerate(committed)
    ]
    assert not any(isinstance(r, ConsumerRecord) for r in got)
    # Any other consumer (no mark) still gets ConsumerRecords with the same fields.
    others = _read(data, None, [(7, 0)])
    assert all(isinstance(r, ConsumerRecord) for r in others)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in others] == [
        (r.offset, r.key, r.value, r.timestamp) for r in got
    ]


def test_the_hook_is_installed() -> None:
    assert PartitionRecords._consumer_record is source._record_as_fetched
