"""Kafka topic IDs (KIP-516): which incarnation of a topic a partition's progress counts.

A topic deleted and recreated under the same name gets a new ID. Progress recorded against the
old one must not be applied to the new log: if a fast producer already wrote past the old
progress, "progress beyond the log end" cannot see it, and resuming would skip the new log's
first records. The stores therefore keep the topic ID beside each partition's progress and the
coordinator compares it with the broker's at every take-over.

aiokafka 0.14 speaks Metadata up to v5, which has no topic IDs, so this module adds Metadata v10
(Kafka 2.8+; flexible encoding) on aiokafka's protocol types and sends it on the consumer's own
connections. Brokers without it answer None: the check is then skipped, as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from io import BytesIO
from typing import Any

from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

NO_ID = uuid.UUID(int=0)


class Uuid(AbstractType[uuid.UUID]):  # type: ignore[misc]  # aiokafka ships no types
    @classmethod
    def encode(cls, value: uuid.UUID) -> bytes:
        return value.bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return uuid.UUID(bytes=raw)


class MetadataResponse_v10(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", CompactString("utf-8")),
                ("port", Int32),
                ("rack", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", CompactString("utf-8")),
                ("topic_id", Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_id", Uuid),
                ("name", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicIdsRequest(Request[MetadataRequest_v10]):  # type: ignore[misc]
    API_KEY = 3

    def __init__(self, topics: Collection[str]) -> None:
        self._topics = sorted(topics)

    def build(self, request_struct_class: type[MetadataRequest_v10]) -> MetadataRequest_v10:
        return request_struct_class([(NO_ID, t, {}) for t in self._topics], False, False, False, {})


def ids_of(response: Any) -> dict[str, str | None]:
    """Topic name -> ID (None for an error or the all-zero ID of a broker without IDs)."""
    out: dict[str, str | None] = {}
    for error_code, name, topic_id, *_ in response.topics:
        if name is None:
            continue
        out[name] = None if error_code or topic_id == NO_ID else str(topic_id)
    return out


async def topic_ids(client: Any, topics: Collection[str]) -> dict[str, str | None]:
    """The current ID of each topic, asked of any broker through aiokafka's `client`; every
    value None when the cluster does not speak Metadata v10 (Kafka before 2.8)."""
    if not topics:
        return {}
    node = client.get_random_node()
    try:
        response = await client.send(node, TopicIdsRequest(topics))
    except NotImplementedError:  # the broker's Metadata versions stop below v10
        return dict.fromkeys(topics)
    found = ids_of(response)
    return {t: found.get(t) for t in topics}
