"""Reads a consumer group's committed offsets and the topics' log offsets from Kafka.

Owns the aiokafka admin client and consumer used for it; I/O only, the lag math is in `lag`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from datarecorder_operator.lag import PartitionOffsets


@dataclasses.dataclass(frozen=True)
class KafkaAccess:
    """How to reach the cluster; credentials are read from the resource's Secrets."""

    brokers: Sequence[str]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ca_pem: str | None = None
    cert_pem: str | None = None  # client certificate and key, for mTLS listeners
    key_pem: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem)
        if self.cert_pem and self.key_pem:
            # load_cert_chain reads files only: write them to a private directory that is
            # gone once the context holds them.
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                cert.write_text(self.cert_pem)
                key.touch(mode=0o600)
                key.write_text(self.key_pem)
                context.load_cert_chain(cert, key)
        return context

    def client_options(self) -> dict[str, object]:
        options: dict[str, object] = {
            "bootstrap_servers": list(self.brokers),
            "security_protocol": self.security_protocol,
            "request_timeout_ms": 10_000,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


class LagReader:
    """An admin client and a consumer for one DataRecorder, started once and reused across
    polls (a connection, a metadata fetch and a SASL handshake per poll otherwise); closed
    and started afresh after a failed read or when the access changes."""

    def __init__(self) -> None:
        self._access: KafkaAccess | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def read(
        self, access: KafkaAccess, group_id: str, topics: Sequence[str], within: float = 20.0
    ) -> list[PartitionOffsets]:
        """Log start, log end and committed offset of every partition of `topics`."""
        if access != self._access:
            await self.close()
        try:
            async with asyncio.timeout(within):
                return await self._read(access, group_id, topics)
        except BaseException:
            await self.close()  # a client in an unknown state is not reused
            raise

    async def _read(
        self, access: KafkaAccess, group_id: str, topics: Sequence[str]
    ) -> list[PartitionOffsets]:
        if self._admin is None or self._consumer is None:
            self._access = access
            self._admin = AIOKafkaAdminClient(**access.client_options())
            await self._admin.start()
            self._consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, **access.client_options()
            )
            await self._consumer.start()
        described = await self._admin.describe_topics(list(topics))
        partitions: list[TopicPartition] = []
        for topic in described:
            if topic.get("error_code"):
                raise RuntimeError(
                    f"topic {topic.get('topic')!r}: Kafka error code {topic['error_code']}"
                )
            for part in topic.get("partitions") or []:
                partitions.append(TopicPartition(topic["topic"], int(part["partition"])))
        committed = await self._admin.list_consumer_group_offsets(group_id, partitions=partitions)
        ends = await self._consumer.end_offsets(partitions)
        starts = await self._consumer.beginning_offsets(partitions)
        result = []
        for tp in sorted(partitions):
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            result.append(
                PartitionOffsets(tp.topic, tp.partition, ends[tp], offset, beginning=starts[tp])
            )
        return result

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = self._access = None
        # Closing a broken client: nothing is left to save, so its errors are dropped.
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()


async def read_offsets(
    access: KafkaAccess, group_id: str, topics: Sequence[str], within: float = 20.0
) -> list[PartitionOffsets]:
    """One read with fresh clients (for one-off callers; the operator keeps a LagReader)."""
    reader = LagReader()
    try:
        return await reader.read(access, group_id, topics, within)
    finally:
        await reader.close()
