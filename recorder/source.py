"""The Kafka side of a recorder: one aiokafka consumer-group member fetching in batches.

Owns the consumer's configuration (manual commits, assignment callbacks, pause/resume, seeks);
what to seek to and when to commit are decided by the pipeline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from recorder import telemetry
from recorder.core.offsets import TP
from recorder.kafka_options import MAX_POLL_INTERVAL_MS, REBALANCE_TIMEOUT_MS
from recorder.settings import Settings


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

    def _new_consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        return AIOKafkaConsumer(
            group_id=settings.KAFKA_GROUP_ID,
            client_id=f"datarecorder-{self.index}",
            enable_auto_commit=False,
            auto_offset_reset=settings.KAFKA_AUTO_OFFSET_RESET,
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

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[TP, list[object]]:
        data = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return {TP(tp.topic, tp.partition): msgs for tp, msgs in data.items()}

    def seek(self, tp: TP, offset: int) -> None:
        """Resume `tp` at `offset` (synchronous: callers rely on nothing running in between)."""
        try:
            self.consumer.seek(kafka_tp(tp), offset)
        except IllegalStateError:
            telemetry.emit(
                telemetry.SEEK_SKIPPED_NOT_ASSIGNED, topic=tp.topic, partition=tp.partition
            )

    async def reset_positions(self, tps: Collection[TP]) -> dict[TP, int]:
        """Where the reset policy starts partitions no sink has written: first or next offset."""
        ktps = [kafka_tp(tp) for tp in tps]
        if self._reset == "latest":
            found = await self.consumer.end_offsets(ktps)
        else:
            found = await self.consumer.beginning_offsets(ktps)
        return {TP(tp.topic, tp.partition): int(off) for tp, off in found.items()}

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

    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]:
        if not tps:
            return {}
        try:
            res = await self.consumer.end_offsets([kafka_tp(tp) for tp in tps])
        except KafkaError:
            return {}
        return {TP(tp.topic, tp.partition): off for tp, off in res.items()}
