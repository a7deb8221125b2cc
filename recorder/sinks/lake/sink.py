"""The cold path: Parquet files in a hive-partitioned lake (S3 or a local directory).

Owns the wiring of the lake sink: start-up checks (the store answers, honours conditional
writes, and no other group records our topics here) and the Sink protocol's progress requests,
each retried. The driver (recorder.sinks.driver) flushes a partition's file batch at
S3_BATCH_SIZE rows or S3_BATCH_TIMEOUT_SEC, one write at a time per partition (rule 2); a
write (`service`) is one recorded range; the progress objects are `progress` and `store`.

The lake protocol (DESIGN rule 4: a fenced writer cannot change the lake). An S3 PUT cannot be
fenced: a writer that stalled past its session timeout (a zombie) may wake up and upload after
a new owner moved on. So the protocol makes every upload harmless instead of preventing it.
A partition's progress object is `{next_offset: N}` or `{next_offset: N, flush_end: E}`, each
with a `generation` that every write increments (see `recorder.sinks.lake.store`; the moves
below are `recorder.sinks.lake.service`):

1. *Intent.* Before uploading the batch [N, E) a writer records `flush_end: E` by a
   compare-and-set (If-Match on the ETag it read, If-None-Match for a new object). Only the
   state `{N}` (no range) may take an intent, and the only way out of `{N, E}` is the commit to
   `{E}`; progress never moves back (`reset-progress` refuses to, except from beyond the end of
   a replaced log, and never over a pending range). So for each N at most one E is ever
   recorded.
2. *Upload only a recorded range.* A writer uploads the files of [N, E) only after it saw that
   very range recorded (it wrote it, or read it). A writer whose batch [N, E') finds another
   range [N, E) recorded drops its batch and flushes exactly [N, E) once it holds those
   records ("adopt"), whoever recorded it; one that finds N moved on is fenced and uploads
   nothing.
3. *Commit.* After all files of [N, E) are uploaded, compare-and-set `{N, E}` -> `{E}`.

Why the lake then equals the log: a file's key is (topic, partition, event hour, N), the first
offset of its recorded range, whatever records of the hour survived validation. Recorded ranges
of a partition are disjoint and consecutive, so two different ranges never produce the same key,
and every upload under a key comes from the one range [N, E) recorded for its N: the same Kafka
records (the log is immutable), the same rows (every decision is a function of the record and of
the validation limit), encoded by the same `Encoder` — the range records the encoder of the
writer that recorded it, and every writer of the range encodes with that one or refuses (see
`recorder.sinks.lake.encoder`) — hence the same rows under the same key. A zombie waking up with a PUT in flight, an abandoned revocation whose PUT lands
later, or a replay after a crash can therefore only rewrite a file with its own contents. And a
commit to E happens only after every file of [N, E) is in the lake, so progress never covers a
missing file. The argument needs the store to honour conditional writes: `start()` checks that
and refuses to run where it does not. Progress objects are scoped by consumer group (see
`recorder.sinks.lake.parquet.progress_key`), and a second group recording one of our topics into the
same prefix is refused at start (it would write every record twice and share our file keys).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TypeVar

from recorder.core.offsets import TP
from recorder.runtime import telemetry
from recorder.runtime.retry import retry_forever
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback
from recorder.sinks.driver import BufferedSink, Schedule
from recorder.sinks.lake.config import SINK as SINK
from recorder.sinks.lake.config import LakeConfig
from recorder.sinks.lake.parquet import groups_root, scratch_prefix
from recorder.sinks.lake.progress import LakeProgress
from recorder.sinks.lake.service import LakeStore
from recorder.sinks.lake.store import Lake

T = TypeVar("T")


class LakeClaimed(RuntimeError):
    """Another consumer group already records one of our topics into this prefix."""


class S3Sink(BufferedSink):
    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, TopicKind],
        lake: Lake,
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
    ) -> None:
        config = LakeConfig.of(settings)
        self._config = config
        self._topics = dict(topics)
        self.objects = LakeProgress(config, lake, self._owns, self._changed)
        self.store = LakeStore(config, topics, self.objects, self._on_retry)
        schedule = Schedule.of_files(config.batch_rows, config.batch_age_sec)
        super().__init__(SINK, self.store, schedule, on_progress, on_resync)
        self.stage = "connecting"  # where start-up is (the shutdown log names it)

    def _owns(self, tp: TP) -> bool:
        return tp in self._buffers

    def _changed(self) -> None:
        self._buffers.changed()

    async def _retried(
        self, what: str, attempt: Callable[[], Awaitable[T]], failed: bool = True
    ) -> T:
        on_failure = self._failed if failed else None
        return await retry_forever(what, attempt, self._config.retry_max_backoff_sec, on_failure)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        lake = self.objects.lake
        await lake.start()
        await self._retried("lake_check", lake.check)
        self.stage = "checking conditional writes"
        scratch = scratch_prefix(self._config.prefix, self._config.group)
        await self._retried(
            "conditional_writes_check", lambda: lake.check_conditional_writes(scratch)
        )
        await self._check_unclaimed()
        self.stage = "started"
        self._start_flushing()
        telemetry.emit(
            telemetry.SINK_STARTED, sink=SINK, lake=lake.description, group=self._config.group
        )

    async def _check_unclaimed(self) -> None:
        lake, group = self.objects.lake, self._config.group
        root = groups_root(self._config.prefix)
        for other in await lake.list_groups(root):
            if other == group:
                continue
            for topic in self._topics:
                if await lake.has_objects(f"{root}{other}/progress/{topic}/"):
                    raise LakeClaimed(
                        f"{lake.description} already holds topic {topic!r} recorded by "
                        f"consumer group {other!r} (this one is {group!r}): two groups "
                        "would write every record twice under the same file keys. Give this "
                        "deployment its own S3_PREFIX, or, if that group is retired, delete "
                        f"{root}{other}/ from the bucket"
                    )

    async def close(self) -> None:
        await self._stop_flushing()
        await self.objects.lake.close()

    # --- partitions ---------------------------------------------------------------------
    def revoke(self, tps: Collection[TP]) -> None:
        self.objects.forget(tps)
        super().revoke(tps)

    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        return await self._retried("load_progress", lambda: self.objects.load(tps))

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        """Record where partitions without progress start (the reset policy's position), so a
        restart before the first flush resumes there instead of asking the policy again."""
        return await self._retried(
            "store_start", lambda: self.objects.store_start(starts), failed=False
        )

    async def load_identity(self, tps: Collection[TP]) -> dict[TP, str | None]:
        return await self._retried("load_progress", lambda: self.objects.load_identity(tps))

    async def store_identity(self, ids: Mapping[TP, str]) -> None:
        await self._retried("store_identity", lambda: self.objects.store_identity(ids))

    async def known_partitions(self, topics: Collection[str]) -> dict[str, set[int]]:
        return await self._retried(
            "known_partitions", lambda: self.objects.known_partitions(topics)
        )
