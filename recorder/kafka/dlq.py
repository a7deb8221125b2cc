"""Dead-letter publishing: invalid records go to `<topic>.dlq` with headers naming the error.

Owns the dead-letter headers of DESIGN.md; sends are awaited (acks=all) before any sink may
record progress past the dead record, so a crash can duplicate a dead letter but never lose it.
A dead letter carries the original bytes, never a cut: the DLQ topics are created able to hold
what their source topics hold, and a send the cluster refuses raises `DeadLetterRefused` (the
pipeline pauses the partitions and retries) instead of a shortened copy being sent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from recorder.runtime import telemetry
from recorder.runtime.settings import Settings

HEADER_ERROR = "x-recorder-error"
HEADER_REASON = "x-recorder-error-reason"
HEADER_TOPIC = "x-recorder-source-topic"
HEADER_PARTITION = "x-recorder-source-partition"
HEADER_OFFSET = "x-recorder-source-offset"
# Kafka holds a record with neither key nor value, but a producer cannot send one: its dead
# letter gets an empty key and this header says the original key was null.
HEADER_NULL_KEY = "x-recorder-source-key-null"

MAX_MESSAGE_BYTES_CONFIG = "max.message.bytes"
# Room for the key, the five headers (the error text is cut at 1,000 bytes) and the record
# batch overhead on top of the largest value the source topic can hold.
HEADROOM_BYTES = 64 * 1024
# Kafka's broker default (message.max.bytes): the limit assumed when a topic cannot be described.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# A send that gets no acknowledgement in this time counts as refused (e.g. a missing topic that
# cannot be created: the producer would wait for its metadata for request_timeout_ms).
SEND_TIMEOUT_SEC = 10.0


class DeadLetterRefused(Exception):
    """The cluster did not take a dead letter (topic missing, not authorized, too large...)."""

    def __init__(self, partitions: frozenset[tuple[str, int]], reason: str) -> None:
        super().__init__(reason)
        self.partitions = partitions  # the source (topic, partition)s whose letters failed
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Origin:
    """What a dead letter's headers say about it: why it was refused and where it came from."""

    reason: str | None
    topic: str | None
    partition: int | None
    offset: int | None


def origin_of(headers: Sequence[tuple[str, bytes | None]] | None) -> Origin:
    """Read a dead letter's headers (missing or unreadable ones are None: a letter written by
    another tool, or by hand, is still a record to replay)."""
    found = {name: value for name, value in headers or () if value is not None}

    def text(name: str) -> str | None:
        value = found.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    def number(name: str) -> int | None:
        value = text(name)
        return int(value) if value is not None and value.isascii() and value.isdigit() else None

    return Origin(
        text(HEADER_REASON), text(HEADER_TOPIC), number(HEADER_PARTITION), number(HEADER_OFFSET)
    )


async def read_records(
    options: dict[str, object], positions: Sequence[tuple[str, int, int]], max_bytes: int
) -> dict[tuple[str, int, int], Any]:
    """The records (aiokafka ConsumerRecords) at these (topic, partition, offset) positions
    that the log still holds, read with a group-less consumer that lives for this call only,
    within SEND_TIMEOUT_SEC (a cluster that does not answer is a transient error for the
    caller, not a hang)."""
    wanted: dict[TopicPartition, set[int]] = {}
    for topic, partition, offset in positions:
        wanted.setdefault(TopicPartition(topic, partition), set()).add(offset)
    out: dict[tuple[str, int, int], Any] = {}
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=max_bytes,
        **options,
    )
    try:
        async with asyncio.timeout(SEND_TIMEOUT_SEC):
            await consumer.start()
            consumer.assign(list(wanted))
            starts = await consumer.beginning_offsets(list(wanted))
            ends = await consumer.end_offsets(list(wanted))
            for tp, offsets in wanted.items():
                first = max(min(offsets), starts[tp])
                last = min(max(offsets) + 1, ends[tp])
                if first >= last:
                    continue  # gone (retention) or never there
                consumer.seek(tp, first)
                while await consumer.position(tp) < last:
                    batch = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
                    for m in batch.get(tp, []):
                        if m.offset in offsets:
                            out[(tp.topic, tp.partition, m.offset)] = m
    finally:
        await consumer.stop()
    return out


def headers_for(letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [
        (HEADER_ERROR, letter.message[:1000].encode("utf-8", "replace")),
        (HEADER_REASON, letter.reason.encode()),
        (HEADER_TOPIC, letter.topic.encode()),
        (HEADER_PARTITION, str(letter.partition).encode()),
        (HEADER_OFFSET, str(letter.offset).encode()),
    ]
    if letter.key is None and letter.value is None:
        headers.append((HEADER_NULL_KEY, b"true"))
    return headers


def key_for(letter: DeadLetter) -> bytes | None:
    """The dead letter's key: the original one, or empty for a record with neither key nor
    value (a keyless tombstone), which producers refuse to send."""
    if letter.key is None and letter.value is None:
        return b""
    return letter.key


def max_message_bytes(described: Sequence[object]) -> dict[str, int]:
    """Pure: topic -> `max.message.bytes` from the admin client's DescribeConfigs responses
    (resources are (error_code, error_message, type, name, entries); entries (name, value,
    ...)); topics that came back with an error are left out."""
    limits: dict[str, int] = {}
    for response in described:
        for resource in getattr(response, "resources", []):
            error_code, _, _, name, entries = resource[:5]
            if error_code:
                continue
            for entry in entries:
                if entry[0] == MAX_MESSAGE_BYTES_CONFIG and entry[1] is not None:
                    limits[str(name)] = int(entry[1])
    return limits


def dlq_limit(source_limit: int) -> int:
    """The `max.message.bytes` a DLQ topic needs to take any record of its source topic."""
    return source_limit + HEADROOM_BYTES


def _append(batch: Any, letter: DeadLetter) -> bool:
    """Add the letter to the producer batch; False when the batch is full (an empty batch takes
    any letter up to the producer's request size)."""
    added = batch.append(
        timestamp=None, key=key_for(letter), value=letter.value, headers=headers_for(letter)
    )
    return added is not None


class DeadLetters:
    """A producer for dead letters; one per process."""

    def __init__(self, settings: Settings, client_options: dict[str, object]) -> None:
        self._settings = settings
        self._options = client_options
        self._producer: AIOKafkaProducer | None = None
        self._topics: list[str] = []
        self._source_limits: dict[str, int] = {}
        self._broken = False  # the last send failed: use a fresh producer for the next one
        self.refusal: str | None = None  # why the last send failed; None once one succeeded

    async def start(self, topics: Sequence[str]) -> None:
        self._topics = list(topics)
        await self._ensure_topics(topics)
        await self._start_producer()

    async def _start_producer(self) -> None:
        largest = max(self._source_limits.values(), default=KAFKA_DEFAULT_MAX_MESSAGE_BYTES)
        # Whatever the source topic could hold, its dead letter must fit in one request.
        request_bytes = max(largest, self._settings.MAX_MESSAGE_BYTES) + HEADROOM_BYTES
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            max_request_size=request_bytes,
            # One batch per partition holds a whole fetch's letters: the producer keeps one
            # request in flight per broker, so at the default 16 KiB a poison flood's letters
            # took several round trips in a row while the consumer waited for their acks.
            max_batch_size=request_bytes,
            linger_ms=0,  # the consumer waits for these acks: do not add latency
            **self._options,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # a failed start still holds a client; the caller may retry
            raise
        self._producer = producer

    async def _ensure_topics(self, topics: Sequence[str]) -> None:
        """Read the source topics' `max.message.bytes` and create the missing DLQ topics able
        to hold as much (existing ones are left as they are, with a warning when smaller)."""
        admin = AIOKafkaAdminClient(**self._options)
        try:
            await admin.start()
            wanted = {self._settings.dlq_topic(t): t for t in topics}
            try:
                described = await admin.describe_configs(
                    [
                        ConfigResource(ConfigResourceType.TOPIC, t, {MAX_MESSAGE_BYTES_CONFIG: ""})
                        for t in [*topics, *wanted]
                    ]
                )
                limits = max_message_bytes(described)
            except KafkaConnectionError:
                raise
            except KafkaError as exc:  # e.g. not authorized to describe: assume the default
                telemetry.emit(telemetry.TOPIC_CONFIGS_NOT_READ, error=str(exc))
                limits = {}
            self._source_limits = {
                t: limits.get(t, KAFKA_DEFAULT_MAX_MESSAGE_BYTES) for t in topics
            }
            existing = set(await admin.list_topics())
            for dlq, source in wanted.items():
                # An existing topic as large as its source holds any value of it (the headers
                # are ~1 KB of the batch overhead's slack); smaller cannot.
                needed = self._source_limits[source]
                if dlq in existing and limits.get(dlq, needed) < needed:
                    telemetry.emit(
                        telemetry.DLQ_TOPIC_TOO_SMALL,
                        topic=dlq,
                        max_message_bytes=limits[dlq],
                        needed=needed,
                        hint=f"kafka-configs --alter --topic {dlq} "
                        f"--add-config {MAX_MESSAGE_BYTES_CONFIG}={dlq_limit(needed)}",
                    )
            missing = [t for t in wanted if t not in existing]
            if missing:
                cluster = await admin.describe_cluster()
                replicas = max(1, min(3, len(cluster.get("brokers", [])) or 1))
                await admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=1,
                            replication_factor=replicas,
                            topic_configs={
                                MAX_MESSAGE_BYTES_CONFIG: str(
                                    dlq_limit(self._source_limits[wanted[t]])
                                )
                            },
                        )
                        for t in missing
                    ]
                )
                telemetry.emit(telemetry.DLQ_TOPICS_CREATED, topics=missing)
        except TopicAlreadyExistsError:
            pass
        except KafkaConnectionError:
            raise  # no cluster yet: the caller waits for it
        except KafkaError as exc:  # e.g. not authorized: the cluster may auto-create them
            telemetry.emit(telemetry.DLQ_TOPICS_NOT_CREATED, error=str(exc))
        finally:
            await admin.close()

    async def _recover(self) -> None:
        """After a refused send: try to create what is missing again, on a fresh producer (an
        idempotent producer whose batch failed may keep failing on its sequence numbers)."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()
            except Exception as exc:
                telemetry.emit(telemetry.DLQ_PRODUCER_STOP_FAILED, error=str(exc))
        await self._ensure_topics(self._topics)
        await self._start_producer()
        self._broken = False

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        """Publish the original bytes and wait for every acknowledgement; raise
        `DeadLetterRefused` (naming the source partitions) when the cluster does not take them.
        Some letters may have landed before the failure: the retry sends them again (a dead
        letter may be duplicated, never lost)."""
        if not letters:
            return
        partitions = frozenset((d.topic, d.partition) for d in letters)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SEC):
                if self._broken or self._producer is None:
                    await self._recover()
                await self._send(letters)
        except (KafkaError, TimeoutError) as exc:
            self._broken = True
            topics = sorted({self._settings.dlq_topic(t) for t, _ in partitions})
            what = "no acknowledgement" if isinstance(exc, TimeoutError) else type(exc).__name__
            reason = f"dead-letter topic {', '.join(topics)} refused the write: {what}: {exc}"
            self.refusal = reason
            telemetry.emit(
                telemetry.DEAD_LETTERS_REFUSED,
                error=reason,
                letters=len(letters),
                topics=sorted(t for t, _ in partitions),  # one per refused partition
            )
            raise DeadLetterRefused(partitions, reason) from exc
        self.refusal = None

    async def send_refused(
        self, positions: Sequence[tuple[str, int, int]], messages: Sequence[str]
    ) -> None:
        """Dead-letter records the database refused: to their source topic's DLQ, with their
        original key and bytes read back from Kafka.

        The rows in memory no longer hold the original bytes, and keeping a copy of every value
        until its flush would double the buffers for a case that almost never happens; a
        short-lived consumer reading just the refused offsets costs nothing until then."""
        if not positions:
            return
        originals = await self.read_originals(positions)
        letters = []
        for (topic, partition, offset), message in zip(positions, messages, strict=True):
            key, value, found = originals.get((topic, partition, offset), (None, None, False))
            if not found:  # gone from the log (retention) between the fetch and the flush
                message += " (original no longer in Kafka)"
            letters.append(DeadLetter(topic, partition, offset, key, value, "db_refused", message))
        await self.send_many(letters)

    async def read_originals(
        self, positions: Sequence[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], tuple[bytes | None, bytes | None, bool]]:
        """(key, value, found) of the records at these positions, read with a group-less
        consumer that lives for this call only."""
        largest = max(self._source_limits.values(), default=1_048_576) + HEADROOM_BYTES
        found = await read_records(self._options, positions, largest)
        return {pos: (m.key, m.value, True) for pos, m in found.items()}

    async def _send(self, letters: Sequence[DeadLetter]) -> None:
        producer = self._producer
        assert producer is not None
        # A source partition's letters go, in order, to the dead-letter partition of the same
        # number (modulo the count), as batches built here: the producer's per-record send
        # costs ~50 us of CPU a letter, a poison flood's largest cost.
        targets: dict[tuple[str, int], list[DeadLetter]] = {}
        for letter in letters:
            topic = self._settings.dlq_topic(letter.topic)
            partitions = sorted(await producer.partitions_for(topic))
            target = (topic, partitions[letter.partition % len(partitions)])
            targets.setdefault(target, []).append(letter)
        futures = []
        for (topic, partition), group in targets.items():
            batch = producer.create_batch()
            for letter in group:
                while not _append(batch, letter):  # full: send it, the letter opens the next
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        for letter in letters:
            telemetry.emit(
                telemetry.DEAD_LETTER,
                topic=letter.topic,
                partition=letter.partition,
                offset=letter.offset,
                reason=letter.reason,
                error=letter.message,
            )
        for (topic, reason), n in Counter((d.topic, d.reason) for d in letters).items():
            telemetry.emit(telemetry.DEAD_LETTERS_SENT, topic=topic, reason=reason, letters=n)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
