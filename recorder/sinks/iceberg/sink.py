"""The cold path as Iceberg tables: wiring of the Iceberg store over the driver.

Owns start-up (the catalog answers, the namespace and tables exist with our columns, no other
consumer group records our topics into them) and the Sink protocol's progress requests, each
a read or a compare-and-swap of the tables' snapshot summaries (`service.IcebergStore.update`),
each retried. The driver (recorder.sinks.driver) flushes a table's batches at S3_BATCH_SIZE
rows or S3_BATCH_TIMEOUT_SEC, one commit at a time per table.

Why this is exactly once: a table's progress lives in its current snapshot's summary, so a
commit of data files and the progress that counts them is one atomic swap of the table's
metadata; the swap is conditional on the snapshot whose progress was checked (rule 1: each
partition's stored progress equals its batch's first offset), so a writer that lost its
partitions — a zombie — finds the progress moved and commits nothing. Data files are uploaded
under fresh names and only a commit makes them part of the table: a refused writer's files are
never read (rule 4 holds without any agreement on keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import TypeVar

from recorder.core.offsets import TP
from recorder.runtime import telemetry
from recorder.runtime.retry import retry_forever
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback
from recorder.sinks.driver import BufferedSink, Schedule
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import SINK as SINK
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.iceberg.progress import TableProgress, with_starts, with_topic_ids
from recorder.sinks.iceberg.service import IcebergStore

T = TypeVar("T")


class IcebergSink(BufferedSink):
    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, TopicKind],
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
    ) -> None:
        config = IcebergConfig.of(settings)
        self._config = config
        self.tables = Tables(config)
        self.store = IcebergStore(config, dict(topics), self.tables, self._on_retry)
        schedule = Schedule.of_files(config.batch_rows, config.batch_age_sec)
        super().__init__(SINK, self.store, schedule, on_progress, on_resync)
        self.stage = "connecting"  # where start-up is (the shutdown log names it)

    async def _retried(self, what: str, attempt: Callable[[], T], failed: bool = True) -> T:
        """`attempt` in a worker thread (pyiceberg blocks), retried while the error is
        transient."""
        return await retry_forever(
            what,
            lambda: asyncio.to_thread(attempt),
            self._config.retry_max_backoff_sec,
            self._failed if failed else None,
        )

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self._retried("iceberg_open", self.tables.open)
        self.stage = "checking the tables' progress"
        await self._retried("iceberg_progress", self.store.check_unclaimed)
        self.stage = "started"
        self._start_flushing()
        telemetry.emit(
            telemetry.SINK_STARTED,
            sink=SINK,
            lake=f"iceberg {self._config.where()}",
            group=self._config.group,
        )

    async def close(self) -> None:
        await self._stop_flushing()
        await asyncio.to_thread(self.tables.close)

    # --- progress -----------------------------------------------------------------------
    def _by_kind(self, tps: Collection[TP]) -> dict[TopicKind, list[TP]]:
        out: dict[TopicKind, list[TP]] = {}
        for tp in tps:
            out.setdefault(self.store.kind(tp), []).append(tp)
        return out

    async def _read(self, tps: Collection[TP]) -> dict[TopicKind, TableProgress]:
        kinds = list(self._by_kind(tps))
        read = await asyncio.gather(
            *(self._retried("load_progress", partial(self.store.read, k)) for k in kinds)
        )
        return dict(zip(kinds, read, strict=True))

    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        read = await self._read(tps)
        return {tp: read[self.store.kind(tp)].offsets.get(tp) for tp in tps}

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        """Record where partitions without progress start (one commit without data per table),
        so a restart before the first flush resumes there; another writer's start wins."""
        group = self._config.group
        out: dict[TP, int] = {}
        for kind, tps in self._by_kind(starts).items():
            change = partial(with_starts, starts={tp: starts[tp] for tp in tps}, group=group)
            stored = await self._retried(
                "store_start", partial(self.store.update, kind, change), failed=False
            )
            out.update({tp: stored.offsets.get(tp, starts[tp]) for tp in tps})
        return out

    async def load_identity(self, tps: Collection[TP]) -> dict[TP, str | None]:
        read = await self._read(tps)
        out: dict[TP, str | None] = {}
        for tp in tps:
            progress = read[self.store.kind(tp)]
            out[tp] = progress.topic_ids.get(tp.topic) if tp in progress.offsets else None
        return out

    async def store_identity(self, ids: Mapping[TP, str]) -> None:
        group = self._config.group
        for kind, tps in self._by_kind(ids).items():
            change = partial(with_topic_ids, ids={tp.topic: ids[tp] for tp in tps}, group=group)
            await self._retried("store_identity", partial(self.store.update, kind, change))

    async def known_partitions(self, topics: Collection[str]) -> dict[str, set[int]]:
        kinds = {self.store.topics.get(t, TopicKind.TICK) for t in topics}
        read = await self._read([TP(t, 0) for t in topics])
        known: dict[str, set[int]] = {}
        for kind in kinds:
            for topic, partitions in read[kind].topics().items():
                known.setdefault(topic, set()).update(partitions)
        return {t: known.get(t, set()) for t in topics}
