"""Pure decisions of the exactly-once rules: the lake protocol, seek positions, halts, resets.

Each also has an integration test on the real stack (tests/integration/recorder/
test_lake_protocol.py, tests/integration/faults/test_topic_recreated.py and
test_reset_policy.py); these pin the decision tables.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from recorder.core.batching import Batch, PartitionBuffer
from recorder.core.columns import from_rows
from recorder.core.offsets import (
    TP,
    IntentOutcome,
    beyond_log_end,
    intent_outcome,
    seek_position,
    unknown_progress,
)
from recorder.core.records import TickRow
from recorder.core.reset_plan import Stored, plan, target_offset
from recorder.runtime.settings import ConfigError, TopicKind, load_settings
from recorder.sinks.lake.encoder import Encoder, EncoderMismatch, for_recorded_range
from recorder.sinks.lake.store import (
    ConditionalWritesUnsupported,
    CorruptProgress,
    LocalLake,
    S3Lake,
    StoredProgress,
    decode_progress,
    encode_progress,
)
from recorder.tools.reset_progress import render

A, B = TP("t", 0), TP("t", 1)


@pytest.mark.parametrize(
    ("stored", "flush_end", "start", "end", "expected"),
    [
        (100, None, 100, 160, IntentOutcome.FREE),  # ours to record
        (None, None, None, 60, IntentOutcome.FREE),  # never written
        (100, 160, 100, 160, IntentOutcome.RECORDED),  # our range is the recorded one
        (100, 130, 100, 160, IntentOutcome.ADOPT),  # another range for our start: flush that
        (100, 190, 100, 160, IntentOutcome.ADOPT),
        (160, None, 100, 160, IntentOutcome.DONE),  # someone flushed exactly these
        (200, None, 100, 160, IntentOutcome.FENCED),  # the owner moved on: we are a zombie
        (160, 220, 100, 160, IntentOutcome.FENCED),  # the owner moved on and records more
        (40, None, 100, 160, IntentOutcome.FENCED),  # reset behind us by reset-progress
        (100, None, None, 60, IntentOutcome.FENCED),  # we never saw it written; it was
    ],
)
def test_intent_decisions(
    stored: int | None, flush_end: int | None, start: int | None, end: int, expected: Any
) -> None:
    assert intent_outcome(stored, flush_end, start, end) is expected


def offsets(batch: Batch) -> list[int]:
    return batch.table().column("offset").to_pylist() if batch.count else []


def test_take_until_cuts_a_batch_at_the_recorded_range() -> None:
    buf = PartitionBuffer(Batch(start=10, end=10))
    rows = [TickRow(10**18 + o, "A", 1.0, o, None, None) for o in (10, 12, 13)]
    buf.offer(from_rows(TopicKind.TICK, [10, 12, 13], rows), 15, now=1.0)  # 11, 14 invalid
    done = buf.take_until(13)
    assert (done.start, done.end, offsets(done)) == (10, 13, [10, 12])
    rest = buf.batch
    assert (rest.start, rest.end, offsets(rest)) == (13, 15, [13])
    assert rest.opened_at == 1.0 and rest.advanced
    assert done.nbytes > 0 and rest.nbytes > 0
    exact = buf.take_until(15)
    assert offsets(exact) == [13] and buf.batch.start == buf.batch.end == 15
    assert buf.batch.opened_at is None and not buf.batch.advanced


def test_seek_keeps_every_known_progress() -> None:
    assert seek_position([100, 40]) == 40
    assert seek_position([100, None]) == 100
    assert seek_position([None, None]) is None
    progress: dict[str, dict[TP, int | None]] = {
        "timescaledb": {A: 100, B: 5},
        "s3": {A: None, B: 3},
    }
    assert unknown_progress(progress, [A, B]) == {A}


def test_progress_beyond_the_log_end_is_named() -> None:
    assert beyond_log_end([100, 40], 100) is None  # at the end: nothing new yet
    assert beyond_log_end([100, 40], 60) == 100
    assert beyond_log_end([None, None], 0) is None
    assert beyond_log_end([100], None) is None  # end unknown: no decision


_ENCODERS = st.builds(
    Encoder,
    st.sampled_from(["range", "hour"]),
    st.sampled_from(["ns", "us"]),
    st.sampled_from(["typed", "json"]),
    st.integers(1, 10**7),
    st.integers(1, 2**31),
    st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)),
    st.sampled_from(["all", "symbol"]),
)


@given(
    st.integers(0, 2**63 - 2),
    st.one_of(st.none(), st.integers(1, 10**9)),
    st.integers(0, 2**40),
    st.one_of(st.none(), _ENCODERS),
    st.one_of(st.none(), st.uuids().map(str)),
)
def test_progress_objects_round_trip(
    offset: int,
    length: int | None,
    generation: int,
    encoder: Encoder | None,
    topic_id: str | None,
) -> None:
    """Every field a writer stores reads back as written; an encoder is kept only with a range
    (the commit to `{E}` ends the range and its encoder)."""
    flush_end = None if length is None else offset + length
    doc = None if encoder is None else encoder.doc()
    got = decode_progress(encode_progress(offset, flush_end, generation, doc, topic_id), "k")
    kept = doc if flush_end is not None else None
    assert got == StoredProgress(offset, None, flush_end, generation, kept, topic_id)
    if got.encoder is not None:
        assert Encoder.from_doc(got.encoder) == encoder


@given(_ENCODERS, st.one_of(st.none(), _ENCODERS))
def test_a_recorded_range_is_written_by_its_own_encoder_or_refused(
    ours: Encoder, recorded: Encoder | None
) -> None:
    """Reference: an older release's range (no encoder) keeps hour keys with our options; a
    recorded encoder is adopted whole when the validation limit is the same, else refused with
    the limit to set."""
    if recorded is None:
        got = for_recorded_range(ours, None, "t[0] [0, 5)")
        assert got.keys == "hour" and (got.unit, got.levels) == (ours.unit, ours.levels)
        assert got.dictionary == "all"  # what the older releases wrote
    elif recorded.max_message_bytes == ours.max_message_bytes:
        assert for_recorded_range(ours, recorded, "t[0] [0, 5)") == recorded
    else:
        with pytest.raises(
            EncoderMismatch, match=f"MAX_MESSAGE_BYTES={recorded.max_message_bytes}"
        ):
            for_recorded_range(ours, recorded, "t[0] [0, 5)")


@given(
    st.dictionaries(
        st.sampled_from(
            ["keys", "unit", "levels", "row_group_size", "max_message_bytes", "dictionary", "x"]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5)),
    )
)
def test_an_encoder_that_is_not_ours_is_refused(doc: dict[str, Any]) -> None:
    try:
        got = Encoder.from_doc(doc)
    except ValueError:
        return
    assert got.doc() == {
        k: v for k, v in doc.items() if k != "x" and (k, v) != ("dictionary", "all")
    }


def test_progress_objects_of_older_releases_and_corruption_is_named() -> None:
    # written before the generation and encoder fields: generation 0, no encoder
    assert decode_progress(b'{"next_offset": 7}', "k") == StoredProgress(7, None)
    assert decode_progress(b'{"next_offset": 7, "flush_end": 9}', "k") == StoredProgress(7, None, 9)
    # the generation alone makes two writes of the same progress differ (so do their ETags)
    assert encode_progress(7, None, 1) != encode_progress(7, None, 2)
    bad = (b"{not json", b'{"offset": 1}', b'{"next_offset": 5, "flush_end": 5}', b"[]")
    for body in (
        *bad,
        b'{"next_offset": 5, "generation": -1}',
        b'{"next_offset": 5, "generation": "x"}',
        b'{"next_offset": 5, "flush_end": 6, "encoder": [1]}',
        b'{"next_offset": 5, "topic_id": 7}',
    ):
        with pytest.raises(CorruptProgress, match="progress object k"):
            decode_progress(body, "k")


def test_local_lake_rewound_progress_never_repeats_a_token(tmp_path: Path) -> None:
    """The local lake's tokens, like S3's ETags, differ for every write (the generation): a
    writer holding the token of {0} from before a rewind back to {0} is refused."""

    async def run() -> None:
        lake = LocalLake(tmp_path)
        await lake.start()
        key = "progress/t/0.json"
        none = StoredProgress(None, None)
        first = none.successor(str(await lake.write_progress(key, none, 0)), 0)
        assert await lake.read_progress(key) == first and first.generation == 1
        intent = first.successor(str(await lake.write_progress(key, first, 0, 50)), 0, 50)
        done = intent.successor(str(await lake.write_progress(key, intent, 50)), 50)
        rewound = done.successor(str(await lake.write_progress(key, done, 0)), 0)
        assert await lake.read_progress(key) == rewound
        assert (rewound.offset, rewound.generation) == (0, 4) and rewound.token != first.token
        assert await lake.write_progress(key, first, 0, 40) is None  # the stale token

    asyncio.run(run())


def test_reset_plan() -> None:
    assert target_offset("earliest", 5, 90) == 5
    assert target_offset("latest", 5, 90) == 90
    assert target_offset("42", 5, 90) == 42
    for bad in ("-1", "first", ""):
        with pytest.raises(ConfigError, match="expected earliest, latest or an offset"):
            target_offset(bad, 0, 1)
    # progress beyond the log end (the log was replaced): the rewind is the resolution
    changes = plan({"timescaledb": {A: Stored(500)}, "s3": {}}, {A: (0, 20)}, "earliest", {})
    assert [(c.sink, c.stored.offset, c.new, c.refusal) for c in changes] == [
        ("timescaledb", 500, 0, None),
        ("s3", None, 0, None),
    ]
    text = render(changes, None)
    assert "t[0]" in text and "dry run" in text and "would move" in text


class _IgnoresConditions:
    """An S3 client of a store that ignores If-None-Match / If-Match (pure stand-in; the real
    server's check passes in tests/integration/recorder/test_lake_protocol.py)."""

    def __init__(self, honours: bool) -> None:
        self.honours = honours
        self.objects: dict[str, bytes] = {}

    async def put_object(self, Bucket: str, Key: str, Body: bytes, **cond: str) -> dict[str, str]:
        refused = cond.get("IfNoneMatch") == "*" or cond.get("IfMatch") not in (None, '"etag"')
        if self.honours and Key in self.objects and refused:
            raise ClientError(
                {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {}}, "PutObject"
            )
        self.objects[Key] = Body
        return {"ETag": '"etag"'}

    async def delete_object(self, Bucket: str, Key: str) -> None:
        self.objects.pop(Key, None)


@pytest.mark.parametrize("honours", [True, False])
def test_a_store_without_conditional_writes_is_refused(honours: bool) -> None:
    lake = S3Lake(load_settings(S3_BUCKET="b", S3_ENDPOINT_URL="http://gateway:9000"))
    client = _IgnoresConditions(honours)
    lake._client = client

    async def check() -> None:
        await lake.check_conditional_writes("p/_recorder/groups/g/probe/")

    if honours:
        asyncio.run(check())
    else:
        with pytest.raises(ConditionalWritesUnsupported, match=r"If-None-Match.*S3_WRITE_ENABLED"):
            asyncio.run(check())
    assert client.objects == {}  # the probe object is removed either way
