"""What decides a lake file's key and rows besides the records: recorded with each flush range.

Rule 4 of the lake protocol (see `recorder.sinks.lake.sink`) needs every writer of a recorded
range [N, E) — its first writer, a zombie, whoever adopts it after a crash — to put the same rows
under the same keys. The records are the same (the log is immutable); what else could differ
between pods is configuration: the Parquet schema options and the validation limit that decides
which records become rows rather than dead letters. So the writer that records a range records
its `Encoder` with it, and every later writer of that range encodes with the recorded one:
schema options are adopted, a different validation limit is refused (its rows would differ, and
a record dead-lettered by one writer would be in the lake by another's hand).

Keys: `range` keys a file by the first offset of its recorded range (one file per event hour per
range), so a key never depends on which records of the hour survived validation, and, when the
progress knows the Kafka topic ID, by its `incarnation` (the ID's first 8 hex digits): a topic
deleted and recreated reuses offsets, and its new log's files must not replace the old log's. Ranges recorded
by releases before this record carry no encoder and keep their `hour` keys (the first offset of
the hour's rows), so a pending range left by an older pod is completed under its own keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, cast

from recorder.runtime.settings import Settings
from recorder.sinks.lake.parquet import Dictionary

Keys = Literal["range", "hour"]


class EncoderMismatch(RuntimeError):
    """A recorded range was begun under a validation limit this writer does not have."""


@dataclass(frozen=True, slots=True)
class Encoder:
    keys: Keys
    unit: Literal["ns", "us"]
    levels: Literal["typed", "json"]
    row_group_size: int
    max_message_bytes: int
    incarnation: str | None = None
    dictionary: Dictionary = "all"

    @classmethod
    def of(cls, settings: Settings) -> Encoder:
        return cls(
            "range",
            settings.PARQUET_TIMESTAMP_UNIT,
            settings.PARQUET_ORDERBOOK_LEVELS,
            settings.PARQUET_ROW_GROUP_SIZE,
            settings.MAX_MESSAGE_BYTES,
            dictionary="symbol",
        )

    def doc(self) -> dict[str, Any]:
        out = asdict(self)
        if self.incarnation is None:
            del out["incarnation"]  # as releases before the field wrote it
        if self.dictionary == "all":
            del out["dictionary"]  # likewise
        return out

    def of_topic(self, topic_id: str | None) -> Encoder:
        """This encoder for a range of the topic incarnation `topic_id` (None: unknown)."""
        return replace(
            self, incarnation=None if topic_id is None else topic_id.replace("-", "")[:8]
        )

    @classmethod
    def from_doc(cls, doc: object) -> Encoder:
        """The encoder a progress object holds; ValueError when it is not one we wrote."""
        if not isinstance(doc, dict):
            raise ValueError(f"encoder is not an object: {doc!r}")
        keys, unit, levels = doc.get("keys"), doc.get("unit"), doc.get("levels")
        rows, limit = doc.get("row_group_size"), doc.get("max_message_bytes")
        incarnation = doc.get("incarnation")
        dictionary = doc.get("dictionary", "all")
        if incarnation is not None and not (
            isinstance(incarnation, str) and incarnation.isalnum() and incarnation.isascii()
        ):
            raise ValueError(f"encoder holds an unknown incarnation: {doc!r}")
        if (
            keys not in ("range", "hour")
            or unit not in ("ns", "us")
            or levels not in ("typed", "json")
            or dictionary not in ("all", "symbol")
            or not isinstance(rows, int)
            or isinstance(rows, bool)
            or rows < 1
            or not isinstance(limit, int)
            or isinstance(limit, bool)
            or limit < 1
        ):
            raise ValueError(f"encoder holds unknown values: {doc!r}")
        return cls(
            cast(Keys, keys),
            cast(Literal["ns", "us"], unit),
            cast(Literal["typed", "json"], levels),
            rows,
            limit,
            incarnation,
            cast(Dictionary, dictionary),
        )


def for_recorded_range(ours: Encoder, recorded: Encoder | None, where: str) -> Encoder:
    """The encoder that writes a recorded range: the recorded one (schema options adopted), our
    own options with `hour` keys and every column dictionary-encoded for a range an older release
    recorded (as it wrote them), or EncoderMismatch when the validation limits differ (the
    range's rows would not be the same)."""
    if recorded is None:
        return Encoder("hour", ours.unit, ours.levels, ours.row_group_size, ours.max_message_bytes)
    if recorded.max_message_bytes != ours.max_message_bytes:
        raise EncoderMismatch(
            f"the pending lake range of {where} was begun with MAX_MESSAGE_BYTES="
            f"{recorded.max_message_bytes} and this recorder has {ours.max_message_bytes}: its "
            "rows would differ (records dead-lettered under one limit would be recorded under "
            f"the other). Set MAX_MESSAGE_BYTES={recorded.max_message_bytes} until the range "
            "is committed, then change it"
        )
    return recorded
