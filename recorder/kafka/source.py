"""The Kafka side of a recorder: one aiokafka consumer-group member fetching in batches.

Owns the consumer's configuration (manual commits, assignment callbacks, pause/resume, seeks);
what to seek to and when to commit are decided by the pipeline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
)

from recorder.core.offsets import TP, PositionLost
from recorder.core.reset_plan import start_position
from recorder.kafka.oauth import login_refused
from recorder.kafka.options import MAX_POLL_INTERVAL_MS, REBALANCE_TIMEOUT_MS, consumer_options
from recorder.kafka.topic_ids import topic_ids
from recorder.runtime import telemetry
from recorder.runtime.settings import Settings


class Fetched(Protocol):
    """What the coordinator reads of a fetched record."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def _lean(value: bytes | None) -> bytes | None:
    """Our consumers' value deserializer (the identity), and the mark `_record_as_fetched`
    looks for."""
    return value


_build_consumer_record = PartitionRecords._consumer_record


def _record_as_fetched(self: Any, tp: TopicPartition, record: Any) -> Any:
    """For our consumers, the record batch's own record object instead of a ConsumerRecord.

    aiokafka builds a ConsumerRecord (a dataclass of eleven fields) for every record, and the
    coordinator reads three of them: building it was ~1 us of a tick's CPU (a third of the
    fetch). The batch layer's record has the same `offset`, `timestamp`, `key` and `value`;
    everything else (aborted transactions, control batches, positions) stays aiokafka's.
    Other consumers in the process (the dead-letter reader, tools) keep ConsumerRecords."""
    if self._value_deserializer is _lean:
        return record
    return _build_consumer_record(self, tp, record)


# aiokafka is pinned (pyproject.toml); tests/unit/recorder/test_source_records.py checks that
# the fetcher still calls this hook with the record objects this relies on.
PartitionRecords._consumer_record = _record_as_fetched


def kafka_tp(tp: TP) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


# What the coordinator does when the group takes partitions away or hands them over.
RebalanceCallback = Callable[[set[TP]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's listener type, calling the coordinator with our own partition type (so
    the coordinator needs no aiokafka import)."""

    def __init__(self, on_revoked: RebalanceCallback, on_assigned: RebalanceCallback) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._on_revoked({TP(t.topic, t.partition) for t in revoked})

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._on_assigned({TP(t.topic, t.partition) for t in assigned})


METADATA_MAX_AGE_MS = 30_000


class KafkaSource:
    def __init__(self, settings: Settings, client_options: dict[str, object], index: int) -> None:
        self.index = index
        self._settings = settings
        self._client_options = client_options
        self.consumer = self._new_consumer()
        self._topics = list(settings.topics())
        self._reset = settings.KAFKA_AUTO_OFFSET_RESET
        self._start_from = settings.start_from()
        # Each partition's fetch position after the last fetch or seek, and the offset after
        # what the last fetch returned of it: past its last record when the broker's log holds
        # transaction markers or aborted records there (see `fetch`).
        self._positions: dict[TP, int] = {}
        self._ends: dict[TP, int] = {}

    def _new_consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        return AIOKafkaConsumer(
            group_id=settings.KAFKA_GROUP_ID,
            client_id=f"datarecorder-{self.index}",
            enable_auto_commit=False,
            # Never reset a position on its own: the coordinator decides (the log start is a
            # boundary to report, not a reason to jump to the end).
            auto_offset_reset="none",
            # Committed data only: aborted transactions are never recorded, and lag is measured
            # against the last stable offset.
            isolation_level="read_committed",
            value_deserializer=_lean,  # records as fetched (`_record_as_fetched`)
            max_partition_fetch_bytes=max(settings.MAX_MESSAGE_BYTES + 65536, 1_048_576),
            fetch_max_bytes=64 * 1024 * 1024,
            session_timeout_ms=settings.KAFKA_SESSION_TIMEOUT_MS,
            # Kafka wants at least three heartbeats per session.
            heartbeat_interval_ms=min(3_000, settings.KAFKA_SESSION_TIMEOUT_MS // 3),
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            # A recreated topic or added partitions rejoin the group within this (aiokafka's
            # default, 5 minutes, left a recreated topic unrecorded and unnoticed that long).
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            **consumer_options(settings),
            **self._client_options,
        )

    async def start(self, on_revoked: RebalanceCallback, on_assigned: RebalanceCallback) -> None:
        """Join the group; after a failed start (no cluster yet) a retry gets a fresh consumer.
        The callbacks run inside the rebalance (aiokafka waits for them)."""
        self.consumer.subscribe(topics=self._topics, listener=_Listener(on_revoked, on_assigned))
        try:
            await self.consumer.start()
        except BaseException:
            await self.consumer.stop()
            self.consumer = self._new_consumer()
            raise

    async def stop(self) -> None:
        await self.consumer.stop()

    def assignment(self) -> set[TP]:
        return {TP(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[TP, list[Fetched]]:
        """Records by partition. A partition whose position moved past offsets that hold no
        record for us (commit/abort markers, aborted records) is included with an empty list,
        so its progress can move past them too (`fetched_end`): otherwise an idle partition
        after a transaction shows a lag of 1 for good. Raises PositionLost instead of letting
        the consumer reset a position."""
        revoked = login_refused(self._client_options)
        if revoked is not None:  # a refused login: aiokafka may have lost its fetcher to it
            raise revoked
        try:
            data = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as exc:
            refused = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            raise PositionLost(
                {TP(tp.topic, tp.partition): int(off) for tp, off in refused.items()}
            ) from None
        except NoOffsetForPartitionError as exc:
            tp = exc.args[0] if exc.args else None
            lost = {TP(tp.topic, tp.partition): None} if isinstance(tp, TopicPartition) else {}
            raise PositionLost(lost) from None
        out: dict[TP, list[Fetched]] = {}
        for ktp in self.consumer.assignment():
            tp = TP(ktp.topic, ktp.partition)
            position = self._position_now(ktp)
            messages = data.get(ktp)
            if messages:
                out[tp] = messages
                last = int(messages[-1].offset) + 1
                self._ends[tp] = max(last, position) if position is not None else last
            elif position is not None and position > self._positions.get(tp, position):
                out[tp] = []
                self._ends[tp] = position
            if position is not None:
                self._positions[tp] = position
        return out

    def fetched_end(self, tp: TP) -> int | None:
        """The offset after the last fetch of `tp`: every offset below it was returned or
        holds nothing to record."""
        return self._ends.get(tp)

    def _position_now(self, ktp: TopicPartition) -> int | None:
        """The consumer's fetch position without a suspension point (aiokafka's public
        `position()` is a coroutine: a seek by a rebalance callback could run in between)."""
        try:
            state = self.consumer._subscription.subscription.assignment.state_value(ktp)
        except AttributeError:
            return None
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    def seek(self, tp: TP, offset: int) -> None:
        """Resume `tp` at `offset` (synchronous: callers rely on nothing running in between)."""
        self._positions[tp] = offset
        try:
            self.consumer.seek(kafka_tp(tp), offset)
        except IllegalStateError:
            telemetry.emit(
                telemetry.SEEK_SKIPPED_NOT_ASSIGNED, topic=tp.topic, partition=tp.partition
            )

    async def reset_positions(self, tps: Collection[TP]) -> dict[TP, int]:
        """Where partitions no sink has written start: START_FROM's point when set
        (`recorder.core.reset_plan.start_position`), otherwise the reset policy's first or next
        offset.

        `latest` applies to a topic the group has never recorded; a partition added to a
        recorded topic starts at its beginning (its first records were produced after the
        topic was already being recorded, and "from now" would skip them)."""
        ktps = [kafka_tp(tp) for tp in tps]
        starts = await self.consumer.beginning_offsets(ktps)
        found = {TP(tp.topic, tp.partition): int(off) for tp, off in starts.items()}
        if self._start_from is not None:
            return await self._start_from_positions(found)
        if self._reset != "latest":
            return found
        fresh = [tp for tp in tps if not await self._topic_recorded(tp.topic)]
        if fresh:
            ends = await self.consumer.end_offsets([kafka_tp(tp) for tp in fresh])
            found.update({TP(tp.topic, tp.partition): int(off) for tp, off in ends.items()})
        return found

    async def _start_from_positions(self, log_starts: dict[TP, int]) -> dict[TP, int]:
        start_from = self._start_from
        assert start_from is not None
        ktps = [kafka_tp(tp) for tp in log_starts]
        ends = {
            TP(tp.topic, tp.partition): int(off)
            for tp, off in (await self.consumer.end_offsets(ktps)).items()
        }
        at: dict[TP, int | None] = dict.fromkeys(log_starts)
        recorded: dict[str, bool] = {}
        if start_from.kind == "time":
            answer = await self.consumer.offsets_for_times(dict.fromkeys(ktps, start_from.value))
            for ktp, found in answer.items():
                at[TP(ktp.topic, ktp.partition)] = None if found is None else int(found.offset)
        else:
            for topic in sorted({tp.topic for tp in log_starts}):
                recorded[topic] = await self._topic_recorded(topic)
        return {
            tp: start_position(start_from, at[tp], start, ends[tp], recorded.get(tp.topic, False))
            for tp, start in log_starts.items()
        }

    async def _topic_recorded(self, topic: str) -> bool:
        """True when the group has committed an offset for some partition of `topic` (the
        coordinator commits the sinks' progress, so a recorded topic has one)."""
        for partition in sorted(self.consumer.partitions_for_topic(topic) or ()):
            if await self.consumer.committed(TopicPartition(topic, partition)) is not None:
                return True
        return False

    async def log_starts(self, tps: Collection[TP]) -> dict[TP, int]:
        """The first offset each partition's log still holds (retention moves it)."""
        if not tps:
            return {}
        try:
            found = await self.consumer.beginning_offsets([kafka_tp(tp) for tp in tps])
        except KafkaError:
            return {}  # unknown for now: the next refused fetch or take-over asks again
        return {TP(tp.topic, tp.partition): int(off) for tp, off in found.items()}

    async def topic_ids(self, topics: Collection[str]) -> dict[str, str | None]:
        """Each topic's current Kafka topic ID (None: the cluster has none to give)."""
        return await topic_ids(self.consumer._client, topics)

    def pause(self, tps: Collection[TP]) -> None:
        self.consumer.pause(*(kafka_tp(tp) for tp in tps))

    def resume(self, tps: Collection[TP]) -> None:
        self.consumer.resume(*(kafka_tp(tp) for tp in tps))

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit hot-path progress so lag tools see it; failures only delay the next commit."""
        owned = self.assignment()
        wanted = {kafka_tp(tp): off for tp, off in offsets.items() if tp in owned}
        if not wanted:
            return
        try:
            await self.consumer.commit(wanted)
        except (CommitFailedError, IllegalStateError) as exc:
            telemetry.emit(telemetry.COMMIT_SKIPPED, reason=type(exc).__name__)
        except KafkaError as exc:
            telemetry.emit(telemetry.COMMIT_FAILED, error=str(exc))

    def highwater(self, tp: TP) -> int | None:
        """High watermark seen by the last fetch of `tp` (no request)."""
        try:
            value = self.consumer.highwater(kafka_tp(tp))
        except IllegalStateError:
            return None
        return int(value) if value is not None else None

    def stable_end(self, tp: TP) -> int | None:
        """Last stable offset seen by the last fetch of `tp` (no request): what is readable
        under read_committed, so lag measured against it has no open or aborted
        transactions in it."""
        try:
            value = self.consumer.last_stable_offset(kafka_tp(tp))
        except IllegalStateError:
            return None
        return int(value) if value is not None else self.highwater(tp)

    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]:
        if not tps:
            return {}
        try:
            res = await self.consumer.end_offsets([kafka_tp(tp) for tp in tps])
        except KafkaError:
            return {}
        return {TP(tp.topic, tp.partition): off for tp, off in res.items()}
