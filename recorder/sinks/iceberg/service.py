"""One write of the Iceberg store: check the progress, upload data files, commit them with it.

Owns `IcebergStore` (the driver's Store: a lane is a table, so each table takes one commit at a
time from this writer and a partition's next batch starts only after the previous one is
committed, rule 2) and the compare-and-swap loop every change of a table's progress goes
through: read the current snapshot's progress, decide, commit against that snapshot; a
conflict (another writer committed first) reads again and decides again. Data files are
written once per write and kept across conflicts while the same partitions still apply; the
files of a refused or fenced write are never referenced, and deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile

from recorder.core.backoff import Backoff
from recorder.core.batching import Batch
from recorder.core.offsets import TP, CasOutcome
from recorder.runtime import telemetry
from recorder.runtime.retry import Transient, retry_forever
from recorder.runtime.settings import TopicKind
from recorder.sinks.driver import Fence, Outcome, Written
from recorder.sinks.iceberg import rows
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.iceberg.progress import TableProgress, committed, decide

# Conflicts in a row before a write gives up for a while (retried with backoff as a transient
# error): every conflict means another writer made progress, so this is rare contention.
MAX_CONFLICTS = 20
CONFLICT_BACKOFF = Backoff(0.02, 1.0, 0.05)
OUTCOMES = {
    CasOutcome.APPLIED: Outcome.WRITTEN,
    CasOutcome.ALREADY_DONE: Outcome.DONE,
    CasOutcome.FENCED: Outcome.FENCED,
}


class TableClaimed(RuntimeError):
    """Another consumer group's progress is in the table for one of our topics."""


Change = Callable[[TableProgress], TableProgress | None]


@dataclass
class IcebergStore:
    """The Iceberg side of the sink: lanes are tables, a write is one commit."""

    config: IcebergConfig
    topics: Mapping[str, TopicKind]
    tables: Tables
    on_retry: Callable[[BaseException], None]
    # The progress each table held when last read or committed by this writer.
    seen: dict[TopicKind, TableProgress] = field(default_factory=dict)
    # The health probe's call in its worker thread: a probe that timed out keeps running until
    # the catalog answers or the silence limit ends it; the next probes do not add threads.
    probing: asyncio.Future[None] | None = None

    def kind(self, tp: TP) -> TopicKind:
        return self.topics.get(tp.topic, TopicKind.TICK)

    def lane(self, tp: TP) -> Hashable:
        return self.kind(tp)

    def recorded_end(self, tp: TP, start: int | None) -> int | None:
        return None  # nothing is recorded before a commit: a batch may end anywhere

    async def probe(self) -> None:
        if self.probing is not None and not self.probing.done():
            raise Transient("the previous probe of the catalog has not returned yet")
        self.probing = asyncio.ensure_future(asyncio.to_thread(self.tables.probe))
        await asyncio.shield(self.probing)  # a timeout gives up waiting, not the call

    async def write(self, batches: dict[TP, Batch]) -> Written:
        kind = self.kind(next(iter(batches)))
        return await retry_forever(
            "iceberg_commit",
            lambda: asyncio.to_thread(self.write_sync, kind, batches),
            self.config.retry_max_backoff_sec,
            self.on_retry,
        )

    # --- in a worker thread -------------------------------------------------------------
    def read(self, kind: TopicKind) -> TableProgress:
        progress = self.tables.progress(self.tables.load(kind))
        self.seen[kind] = progress
        return progress

    def _claimed(self, kind: TopicKind, progress: TableProgress) -> None:
        group = progress.group
        if group is None or group == self.config.group:
            return
        ours = {t for t, k in self.topics.items() if k is kind}
        if ours & set(progress.topics()):
            raise TableClaimed(
                f"Iceberg table {self.config.table(kind)} holds the progress of consumer group "
                f"{group!r} for {sorted(ours & set(progress.topics()))} (this one is "
                f"{self.config.group!r}): two groups would record every record twice. Give "
                "this deployment its own tables (ICEBERG_NAMESPACE / ICEBERG_*_TABLE)"
            )

    def check_unclaimed(self) -> None:
        for kind in TopicKind:
            self._claimed(kind, self.read(kind))

    def update(self, kind: TopicKind, change: Change) -> TableProgress:
        """Commit `change(progress)` (no data) where it is not None, compare-and-swap."""
        for attempt in range(1, MAX_CONFLICTS + 1):
            table = self.tables.load(kind)
            progress = self.tables.progress(table)
            self._claimed(kind, progress)
            new = change(progress)
            if new is None:
                self.seen[kind] = progress
                return progress
            try:
                self.tables.commit(table, [], new)
            except CommitFailedException:
                self._conflict(kind, attempt, len(new.offsets))
                continue
            self.seen[kind] = new
            return new
        raise Transient(f"{self.config.table(kind)}: {MAX_CONFLICTS} commit conflicts in a row")

    def write_sync(self, kind: TopicKind, batches: Mapping[TP, Batch]) -> Written:
        ranges = {tp: (b.start, b.end) for tp, b in batches.items()}
        data = {tp: rows.rows(kind, b.table(), self.config.levels) for tp, b in batches.items()}
        files: list[DataFile] = []
        files_of: frozenset[TP] = frozenset()
        for attempt in range(1, MAX_CONFLICTS + 1):
            table = self.tables.load(kind)
            stored = self.tables.progress(table)
            self._claimed(kind, stored)
            outcomes = decide(stored.offsets, ranges)
            applied = frozenset(tp for tp, o in outcomes.items() if o is CasOutcome.APPLIED)
            if applied != files_of:  # the first attempt, or a conflict fenced some partitions
                self.tables.discard(table, files)
                files, files_of = [], applied
                if applied:
                    joined = pa.concat_tables([data[tp] for tp in sorted(applied)])
                    files = self.tables.write_files(table, joined)
            if not applied:
                self.seen[kind] = stored
                return self._written(ranges, outcomes, stored, [])
            new = committed(stored, {tp: batches[tp].end for tp in applied}, self.config.group)
            try:
                self.tables.commit(table, files, new)
            except CommitFailedException:
                self._conflict(kind, attempt, len(applied))
                continue
            self.seen[kind] = new
            return self._written(ranges, outcomes, stored, files)
        self.tables.discard(self.tables.load(kind), files)
        raise Transient(f"{self.config.table(kind)}: {MAX_CONFLICTS} commit conflicts in a row")

    def _conflict(self, kind: TopicKind, attempt: int, partitions: int) -> None:
        telemetry.emit(
            telemetry.ICEBERG_COMMIT_CONFLICT,
            table=self.config.table(kind),
            attempt=attempt,
            partitions=partitions,
        )
        time.sleep(CONFLICT_BACKOFF.delay(attempt))

    def _written(
        self,
        ranges: Mapping[TP, tuple[int | None, int]],
        outcomes: Mapping[TP, CasOutcome],
        stored: TableProgress,
        files: list[DataFile],
    ) -> Written:
        fences: dict[TP, Fence] = {}
        for tp, outcome in outcomes.items():
            if outcome is CasOutcome.FENCED:
                offset = stored.offsets.get(tp)
                fields: dict[str, Any] = {"batch": list(ranges[tp]), "stored": offset}
                fences[tp] = Fence(offset, fields)
        log: dict[str, Any] = {}
        if files:
            log = {"files": len(files), "bytes": sum(f.file_size_in_bytes for f in files)}
        return Written({tp: OUTCOMES[o] for tp, o in outcomes.items()}, fences, log)
