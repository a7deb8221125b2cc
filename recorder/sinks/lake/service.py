"""One write of the lake sink: the lake protocol's intent -> upload -> commit for one batch.

Owns `LakeStore` (the driver's Store: a lane is one partition, so a partition's next upload
starts only after the previous one's progress is recorded, rule 2), the protocol's moves on
the progress object (see the protocol in recorder.sinks.lake.sink), and the encoding of a
recorded range into one Parquet file per event hour, by the encoder recorded with the range.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from recorder.core.batching import Batch, split_by_hour
from recorder.core.kinds import FALLBACK, TopicKind
from recorder.core.offsets import TP, IntentOutcome, intent_outcome
from recorder.runtime import metrics
from recorder.runtime.retry import retry_forever
from recorder.sinks.driver import Fence, Outcome, Written
from recorder.sinks.lake.config import LakeConfig
from recorder.sinks.lake.encoder import Encoder, for_recorded_range
from recorder.sinks.lake.parquet import batch_columns, object_key, write_parquet
from recorder.sinks.lake.progress import LakeProgress
from recorder.sinks.lake.store import StoredProgress

PARALLEL_UPLOADS = 8
Files = list[tuple[str, tempfile.SpooledTemporaryFile[bytes], int]]


@dataclass
class LakeStore:
    """The lake side of the sink: lanes are partitions, a write is one recorded range."""

    config: LakeConfig
    topics: Mapping[str, TopicKind]
    objects: LakeProgress
    on_retry: Callable[[BaseException], None]
    _uploads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PARALLEL_UPLOADS))
    # The progress object holding the range a flush just found recorded (its encoder).
    _intents: dict[TP, StoredProgress] = field(default_factory=dict)

    def lane(self, tp: TP) -> Hashable:
        return tp

    def recorded_end(self, tp: TP, start: int | None) -> int | None:
        return self.objects.recorded_end(tp, start)

    async def probe(self) -> None:
        await self.objects.lake.check()

    async def write(self, batches: dict[TP, Batch]) -> Written:
        ((tp, batch),) = batches.items()
        outcome = await retry_forever(
            "flush_intent",
            lambda: self.record_intent(tp, batch),
            self.config.retry_max_backoff_sec,
            self.on_retry,
        )
        if outcome is IntentOutcome.DONE:
            return Written({tp: Outcome.DONE})  # someone else flushed exactly these records
        if outcome is not IntentOutcome.RECORDED:
            return self._fenced(tp, batch, outcome)
        kind = self.topics.get(tp.topic, FALLBACK)
        files = await asyncio.to_thread(self.encode_recorded, tp, kind, batch)
        nbytes = sum(size for _, _, size in files)
        try:
            await asyncio.gather(*(self.upload(key, body, size) for key, body, size in files))
        finally:
            for _, body, _ in files:
                body.close()
        committed = await retry_forever(
            "progress",
            lambda: self.commit(tp, batch),
            self.config.retry_max_backoff_sec,
            self.on_retry,
        )
        if committed is IntentOutcome.FENCED:
            # Our files are the recorded range's own bytes (rule 4), so the lake is intact.
            return self._fenced(tp, batch, committed)
        if committed is IntentOutcome.RECORDED:
            metrics.S3_BYTES_UPLOADED.labels(tp.topic).inc(nbytes)
            return Written({tp: Outcome.WRITTEN}, log={"files": len(files), "bytes": nbytes})
        return Written({tp: Outcome.DONE}, log={"files": len(files), "bytes": nbytes})

    def _fenced(self, tp: TP, batch: Batch, outcome: IntentOutcome) -> Written:
        stored = self.objects.stored.get(tp)
        fields = {
            "batch": [batch.start, batch.end],
            "stored": None if stored is None else [stored.offset, stored.flush_end],
        }
        resume = None if stored is None else stored.offset
        return Written(
            {tp: Outcome.FENCED}, {tp: Fence(resume, fields, adopts=outcome is IntentOutcome.ADOPT)}
        )

    async def upload(self, key: str, body: tempfile.SpooledTemporaryFile[bytes], size: int) -> None:
        async with self._uploads:
            await retry_forever(
                "upload",
                lambda: self.objects.lake.put_file(key, body, size),
                self.config.retry_max_backoff_sec,
                self.on_retry,
            )

    def encode_recorded(self, tp: TP, kind: TopicKind, batch: Batch) -> Files:
        """The files of the range `record_intent` just found recorded, by its encoder."""
        recorded = self._intents.pop(tp)
        assert recorded.offset is not None
        encoder = for_recorded_range(
            self.config.encoder,
            None if recorded.encoder is None else Encoder.from_doc(recorded.encoder),
            f"{tp.topic}[{tp.partition}] [{recorded.offset}, {recorded.flush_end})",
        )
        return self.encode(tp, kind, batch, encoder, recorded.offset)

    def encode(
        self, tp: TP, kind: TopicKind, batch: Batch, encoder: Encoder, range_start: int
    ) -> Files:
        """One Parquet file per UTC event hour of the recorded range starting at `range_start`,
        spilled to disk above the part size."""
        out: Files = []
        spill = self.config.spill_bytes
        columns = batch_columns(kind, encoder.levels)
        try:
            groups = split_by_hour(batch.table(columns)) if batch.count else []
            for hour, first_offset, part in groups:
                # Closed by write after the upload.
                body: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                    max_size=spill
                )
                named = range_start if encoder.keys == "range" else first_offset
                key = object_key(
                    self.config.prefix,
                    kind,
                    hour,
                    tp.topic,
                    tp.partition,
                    named,
                    encoder.incarnation,
                )
                out.append((key, body, 0))
                write_parquet(
                    body,
                    kind,
                    part,
                    encoder.unit,
                    encoder.levels,
                    encoder.row_group_size,
                    encoder.dictionary,
                )
                out[-1] = (key, body, body.tell())
        except BaseException:
            for _, spilled, _ in out:
                spilled.close()  # the spill files of a failed encode (disk full) must not linger
            raise
        return out

    async def record_intent(self, tp: TP, batch: Batch) -> IntentOutcome:
        """Step 1 of the protocol: make [start, end) the recorded range, or find out why not.
        A decision other than FREE is taken on the store's view, never on a stale cache alone."""
        key = self.objects.key(tp)
        # A partition never written before (the pipeline stores a start at assignment; direct
        # users of the sink may not): its range starts at the batch's first record.
        first = batch.start
        if first is None:
            first_row = batch.first_offset()
            first = first_row if first_row is not None else batch.end
        stored = self.objects.stored.get(tp)
        fresh = False
        if stored is None:
            stored, fresh = await self.objects.read(tp), True
        for _ in range(5):
            outcome = intent_outcome(stored.offset, stored.flush_end, batch.start, batch.end)
            if outcome is IntentOutcome.FREE:
                ours = self.config.encoder.of_topic(stored.topic_id).doc()
                token = await self.objects.lake.write_progress(key, stored, first, batch.end, ours)
                if token is not None:
                    recorded = stored.successor(token, first, batch.end, ours)
                    self.objects.remember(tp, recorded)
                    self._intents[tp] = recorded
                    return IntentOutcome.RECORDED
            elif outcome is not IntentOutcome.FENCED or fresh:
                if outcome is IntentOutcome.RECORDED:
                    self._intents[tp] = stored  # recorded before (by us or another writer)
                return outcome
            stored, fresh = await self.objects.read(tp), True
            self.objects.remember(tp, stored)
        return IntentOutcome.FENCED  # lost five races in a row: drop the batch, replay from store

    async def commit(self, tp: TP, batch: Batch) -> IntentOutcome:
        """Step 3: `{start, end}` -> `{end}`. RECORDED when ours moved it; DONE when another
        writer committed the same range first; FENCED otherwise."""
        key = self.objects.key(tp)
        expected = self.objects.stored.get(tp, StoredProgress(batch.start, None, batch.end))
        token = await self.objects.lake.write_progress(key, expected, batch.end)
        if token is not None:
            self.objects.remember(tp, expected.successor(token, batch.end))
            return IntentOutcome.RECORDED
        current = await self.objects.read(tp)
        self.objects.remember(tp, current)
        if current.offset == batch.end and current.flush_end is None:
            return IntentOutcome.DONE
        return IntentOutcome.FENCED
