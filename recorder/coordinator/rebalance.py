"""Taking partitions over and giving them up: the rebalance callbacks, the take-over's I/O
around its pure plan (`recorder.core.takeover`), holds and halts, resyncs, refused positions.

Owns the order of the awaits (DESIGN rule 3: revocation waits for the revoked partitions'
flushes; no await between the sinks' new buffers and the seeks) and the background retry of
held partitions. Every pause goes through the table's one plan (`pause_as_planned`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from functools import partial

from recorder.coordinator.health import Health, forget_lag
from recorder.coordinator.ports import Source
from recorder.core import takeover
from recorder.core.offsets import TP, SentLetters, seek_position, unknown_progress
from recorder.core.partitions import HaltedAt, PartitionTable
from recorder.core.takeover import Move
from recorder.kafka.options import REVOKE_DEADLINE_SEC
from recorder.runtime import metrics, telemetry
from recorder.runtime.settings import Settings
from recorder.sinks.base import Sink

HELD_RETRY_MIN_SEC = 2.0
HELD_RETRY_MAX_SEC = 30.0


class Rebalance:
    """The partitions' comings and goings for every consumer of the process."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        sources: Sequence[Source],
        table: PartitionTable,
        health: Health,
    ) -> None:
        self.settings = settings
        self.sinks = sinks
        self.sources = sources  # the recorder's list itself (not a copy): members it adds count
        self.partitions = table
        # The dead letters sent from this process (the intake sends them, a halt forgets them).
        self.letters = SentLetters()
        self.health = health
        self.clock = health.clock
        self.held_retry: asyncio.Task[None] | None = None
        # The lost range last reported per partition: a take-over that starts over (a second
        # assignment before the first finished) finds the same range and must not count it twice.
        self.reported_lost: dict[TP, tuple[int, int]] = {}

    def pause_as_planned(self, source: Source) -> None:
        """Pause what the table's pause plan says, resume the rest `source` owns."""
        plan = self.partitions.pause_plan(source.assignment(), source.index, self.clock.monotonic())
        source.pause(plan.pause)
        source.resume(plan.resume)

    async def join(self, source: Source) -> None:
        """Join the group with `source`, its rebalances calling back here."""
        await source.start(partial(self.on_revoked, source), partial(self.on_assigned, source))

    # --- revocation -------------------------------------------------------------------------
    async def on_revoked(self, source: Source, tps: set[TP]) -> None:
        """DESIGN rule 3: finish (or abandon) the revoked partitions' work before giving them up."""
        # With NUM_CONSUMERS>1 a late revocation of one member may name partitions a sibling
        # in this process was given meanwhile (before this callback or during its awaits):
        # their state and buffers are the sibling's then, and stay untouched.
        tps = self._still_owned(source, tps)
        if not tps:
            return
        self.partitions.revoking(tps)  # nothing more is offered; what flushes is committed
        started = self.clock.monotonic()
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_SEC):
                await asyncio.gather(*(sink.flush_all(tps) for sink in self.sinks))
        except TimeoutError:
            telemetry.emit(telemetry.REVOKE_ABANDONED, partitions=len(tps))
            for sink in self.sinks:
                await sink.abandon(self._still_owned(source, tps))
        tps = self._still_owned(source, tps)
        await source.commit(self.partitions.take_commits(tps))
        tps = self._still_owned(source, tps)
        for sink in self.sinks:
            sink.revoke(tps)
        for tp in self.partitions.revoke(tps):
            metrics.PARTITION_HALTED.labels(tp.topic, str(tp.partition)).set(0)
        forget_lag(tps, self.sinks)
        seconds = round(self.clock.monotonic() - started, 3)
        telemetry.emit(telemetry.PARTITIONS_REVOKED, count=len(tps), seconds=seconds)

    def _still_owned(self, source: Source, tps: set[TP]) -> set[TP]:
        """Those of `tps` no sibling member was given since `source` owned them."""
        siblings = set().union(*(s.assignment() for s in self.sources if s is not source))
        return self.partitions.owned_by(tps - siblings, source.index)

    # --- assignment -------------------------------------------------------------------------
    async def on_assigned(self, source: Source, tps: set[TP]) -> None:
        if not tps:
            return
        metrics.ASSIGNED_PARTITIONS.inc(len(tps))
        self.partitions.assign(tps, source.index)
        await self.take_over_or_hold(source, tps)

    async def take_over_or_hold(self, source: Source, tps: set[TP]) -> None:
        try:
            await self.take_over(source, tps)
        except Exception as exc:
            # aiokafka swallows what a rebalance callback raises, which would leave these
            # partitions assigned but never read while /health said OK. Hold them instead
            # (paused, unready, counted) and retry in the background with backoff.
            reason = f"{type(exc).__name__}: {exc}"
            telemetry.emit(telemetry.ASSIGNMENT_FAILED, partitions=len(tps), error=reason)
            for tp in tps:
                self.partitions.hold(tp, f"cannot load progress: {reason}")
            self.pause_as_planned(source)
            self.retry_held_soon()

    async def take_over(self, source: Source, tps: set[TP]) -> None:
        """Seek newly assigned partitions to the smallest position any sink needs (DESIGN):
        each sink's stored progress, or for a sink with none the reset policy's start, which
        that sink then stores. A partition whose progress does not fit its log halts."""
        progress = {sink.name: await sink.load_progress(tps) for sink in self.sinks}
        current_ids = await source.topic_ids({tp.topic for tp in tps})
        recorded_ids = {sink.name: await sink.load_identity(tps) for sink in self.sinks}
        gaps = takeover.gap_topics(progress, tps)
        known = {s.name: await s.known_partitions(gaps) for s in self.sinks} if gaps else {}
        ends = await source.end_offsets(tps)
        earlier = {tp: self.partitions.halted_at(tp) for tp in tps}
        verdict = takeover.judge(tps, progress, ends, current_ids, recorded_ids, known, earlier)
        for tp in tps - verdict.sticky:
            self.partitions.clear_halt(tp)
        for tp, at in verdict.halts.items():
            self.halt(source, tp, at)
        unknown = unknown_progress(progress, verdict.live)
        if unknown:
            starts = await source.reset_positions(unknown)
            for sink in self.sinks:
                missing = takeover.missing_starts(progress[sink.name], unknown, starts)
                if missing:
                    progress[sink.name].update(await sink.store_start(missing))
        log_starts = await source.log_starts(verdict.live)
        truncation_halts = self.settings.ON_LOG_TRUNCATION == "halt"
        plan = takeover.place(
            verdict.live, progress, log_starts, truncation_halts, current_ids, recorded_ids
        )
        for tp in sorted(plan.lost.keys() | plan.halts.keys()):
            if tp in plan.halts:
                self.halt(source, tp, plan.halts[tp])
            else:
                self.lost(tp, *plan.lost[tp])
        for sink in self.sinks:  # each store learns the topic ID its progress counts
            if sink.name in plan.learn:
                await sink.store_identity(plan.learn[sink.name])
        live = plan.live & source.assignment()  # a retry outside the callback may race a revoke
        # No await from here to the last seek: aiokafka keeps fetching while this callback runs,
        # and a fetch landing between a buffer's creation and its partition's seek would leave
        # a gap that the re-fetch from the seek position then skips as already buffered.
        for sink in self.sinks:
            sink.assign({tp: progress[sink.name][tp] for tp in live})
        released = False
        for tp in sorted(live):
            position = plan.seeks.get(tp)
            if position is not None:
                source.seek(tp, position)
            if self.partitions.seeked(tp):
                telemetry.emit(telemetry.PARTITION_RELEASED, topic=tp.topic, partition=tp.partition)
                released = True
        if released:
            self.pause_as_planned(source)
        telemetry.emit(
            telemetry.PARTITIONS_ASSIGNED,
            count=len(live),
            halted=len(verdict.halts) + len(plan.halts),
            progress={
                f"{tp.topic}[{tp.partition}]": {n: p[tp] for n, p in progress.items()}
                for tp in sorted(live)
            },
        )

    # --- halts and losses -------------------------------------------------------------------
    def halt(self, source: Source, tp: TP, at: HaltedAt) -> None:
        self.letters.forget(tp)
        reason = takeover.halt_reason(tp, at, [s.name for s in self.sinks])
        if self.partitions.halt(tp, at, reason):
            telemetry.emit(
                telemetry.PARTITION_HALTED,
                topic=tp.topic,
                partition=tp.partition,
                progress=at.beyond,
                log_end=at.log_end,
                reason=reason,
            )
        self.pause_as_planned(source)
        self.retry_held_soon()

    async def halt_running(self, source: Source, tp: TP, log_end: int) -> None:
        """The log of an assigned partition now ends before our progress: stop taking it."""
        values = tuple(s.progress().get(tp) for s in self.sinks)
        progress = max(v for v in values if v is not None)
        self.halt(source, tp, HaltedAt(values, progress, log_end))
        for sink in self.sinks:
            await sink.abandon([tp])
            sink.revoke([tp])
        self.partitions.take_commits({tp})  # progress past the log end is never committed
        self.retry_held_soon()

    def lost(self, tp: TP, position: int, log_start: int) -> None:
        """Records [position, log_start) left the log before any sink wrote them: loud, counted,
        and the partition goes on at its log start (never at its end). Once per range."""
        if self.reported_lost.get(tp) == (position, log_start):
            return
        self.reported_lost[tp] = (position, log_start)
        telemetry.emit(
            telemetry.RECORDS_LOST,
            topic=tp.topic,
            partition=tp.partition,
            first=position,
            end=log_start,
            count=log_start - position,
            reason="retention",
        )

    async def reposition(self, source: Source, lost: Mapping[TP, int | None]) -> None:
        """The broker refused fetch positions (PositionLost): below the log start goes on at
        the log start (or halts), past the log end halts, no position takes the partition
        over again from the sinks' progress."""
        owned = source.assignment()
        # Held or halted partitions have no position on purpose (paused until their progress
        # loads): the held-partition retry takes them over, not this.
        tps = {tp for tp in lost if tp in owned and not self.partitions.is_held(tp)}
        if not tps:
            return
        starts = await source.log_starts(tps)
        ends = await source.end_offsets(tps)
        for tp in sorted(tps):
            position = lost[tp]
            move = takeover.reposition(position, starts.get(tp), ends.get(tp))
            if move is Move.TAKE_OVER or position is None:
                await self.take_over_or_hold(source, {tp})
            elif move is Move.HALT_PAST_END:
                await self.halt_running(source, tp, ends[tp])
            elif move is Move.TRUNCATED and self.settings.ON_LOG_TRUNCATION == "halt":
                values = tuple(s.progress().get(tp) for s in self.sinks)
                self.halt(source, tp, HaltedAt(values, position, starts[tp], True))
            elif move is Move.TRUNCATED:
                self.lost(tp, position, starts[tp])
                source.seek(tp, starts[tp])
            else:
                source.seek(tp, position)  # within the log again (a leader change): retry

    # --- held partitions (halted, or waiting for their progress) ----------------------------
    def retry_held_soon(self) -> None:
        if self.health.stopping:
            return  # the shutdown cancelled the retries; a later owner takes them over
        if self.held_retry is None or self.held_retry.done():
            self.held_retry = asyncio.create_task(self._retry_held(), name="retry-held")

    async def _retry_held(self) -> None:
        """Take held partitions over again until each loads its progress and lies within its
        log: a store that comes back, or an operator's `reset-progress`, releases them."""
        wait = HELD_RETRY_MIN_SEC
        while self.partitions.held():
            await self.clock.sleep(wait)
            owned_anywhere = set().union(*(s.assignment() for s in self.sources))
            gone = [tp for tp in self.partitions.held() if tp not in owned_anywhere]
            self.partitions.revoke(gone)  # revoked meanwhile: its next owner decides
            for source in self.sources:
                mine = {tp for tp in self.partitions.held() if tp in source.assignment()}
                if not mine:
                    continue
                try:
                    await self.take_over(source, mine)
                except Exception as exc:
                    telemetry.emit(
                        telemetry.HELD_PARTITIONS_RETRY_FAILED,
                        error=f"{type(exc).__name__}: {exc}",
                    )
            wait = min(HELD_RETRY_MAX_SEC, wait * 2)

    # --- resyncs ----------------------------------------------------------------------------
    async def apply_resyncs(self, source: Source) -> None:
        """A sink dropped a buffer (fenced or failed): feed it again from the stored progress."""
        for tp in self.partitions.resyncs(source.assignment()):
            if not self.partitions.begin_resync(tp):
                continue
            position = seek_position(sink.progress().get(tp) for sink in self.sinks)
            telemetry.emit(
                telemetry.PARTITION_RESYNC,
                topic=tp.topic,
                partition=tp.partition,
                position=position,
            )
            if position is None:
                position = (await source.reset_positions([tp]))[tp]
            if not self.partitions.may_seek(tp) or tp not in source.assignment():
                continue  # failed again, held or revoked while the position was looked up
            source.seek(tp, position)
            self.partitions.seeked(tp)
