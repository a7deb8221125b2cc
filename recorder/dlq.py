"""Dead-letter publishing: invalid records go to `<topic>.dlq` with headers naming the error.

Owns the dead-letter headers of DESIGN.md; sends are awaited (acks=all) before any sink may
record progress past the dead record, so a crash can duplicate a dead letter but never lose it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from recorder import metrics
from recorder.settings import Settings

log = structlog.get_logger("recorder.dlq")

HEADER_ERROR = "x-recorder-error"
HEADER_REASON = "x-recorder-error-reason"
HEADER_TOPIC = "x-recorder-source-topic"
HEADER_PARTITION = "x-recorder-source-partition"
HEADER_OFFSET = "x-recorder-source-offset"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    message: str


def headers_for(letter: DeadLetter) -> list[tuple[str, bytes]]:
    return [
        (HEADER_ERROR, letter.message[:1000].encode("utf-8", "replace")),
        (HEADER_REASON, letter.reason.encode()),
        (HEADER_TOPIC, letter.topic.encode()),
        (HEADER_PARTITION, str(letter.partition).encode()),
        (HEADER_OFFSET, str(letter.offset).encode()),
    ]


class DeadLetters:
    """A producer for dead letters; one per process."""

    def __init__(self, settings: Settings, client_options: dict[str, object]) -> None:
        self._settings = settings
        self._options = client_options
        self._producer: AIOKafkaProducer | None = None

    async def start(self, topics: Sequence[str]) -> None:
        await self._ensure_topics(topics)
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            max_request_size=max(2 * self._settings.MAX_MESSAGE_BYTES, 1_048_576) + 65536,
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
        admin = AIOKafkaAdminClient(**self._options)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [self._settings.dlq_topic(t) for t in topics]
            missing = [t for t in missing if t not in existing]
            if missing:
                cluster = await admin.describe_cluster()
                replicas = max(1, min(3, len(cluster.get("brokers", [])) or 1))
                await admin.create_topics(
                    [NewTopic(t, num_partitions=1, replication_factor=replicas) for t in missing]
                )
                log.info("dlq_topics_created", topics=missing)
        except TopicAlreadyExistsError:
            pass
        except KafkaConnectionError:
            raise  # no cluster yet: the caller waits for it
        except KafkaError as exc:  # e.g. not authorized: the cluster may auto-create them
            log.warning("dlq_topics_not_created", error=str(exc))
        finally:
            await admin.close()

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        """Publish and wait for every acknowledgement."""
        if not letters:
            return
        producer = self._producer
        if producer is None:
            raise RuntimeError("dead-letter producer not started")
        futures = []
        for letter in letters:
            value = letter.value
            if value is not None and len(value) > 2 * self._settings.MAX_MESSAGE_BYTES:
                # Keep the dead letter publishable: the headers still say where the original is.
                value = value[: 2 * self._settings.MAX_MESSAGE_BYTES]
            futures.append(
                await producer.send(
                    self._settings.dlq_topic(letter.topic),
                    value=value,
                    key=letter.key,
                    headers=headers_for(letter),
                )
            )
            metrics.DEAD_LETTERS.labels(letter.topic, letter.reason).inc()
            log.debug(
                "dead_letter",
                topic=letter.topic,
                partition=letter.partition,
                offset=letter.offset,
                reason=letter.reason,
                error=letter.message,
            )
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
