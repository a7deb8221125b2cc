"""The lake sink's own settings, read from `Settings` once.

Owns `LakeConfig`: the prefix and consumer group that scope keys and progress objects, the
file batch size and age, the spill size, the retry cap and the encoder of new ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from recorder.runtime.settings import Settings
from recorder.sinks.lake.encoder import Encoder

SINK = "s3"


@dataclass(frozen=True, slots=True)
class LakeConfig:
    prefix: str  # S3_PREFIX
    group: str  # KAFKA_GROUP_ID: progress objects are scoped by it
    batch_rows: int  # S3_BATCH_SIZE
    batch_age_sec: float  # S3_BATCH_TIMEOUT_SEC
    spill_bytes: int  # S3_PART_SIZE_MB: a file larger than this is encoded to disk
    retry_max_backoff_sec: float
    encoder: Encoder  # what this writer records with the ranges it records

    @classmethod
    def of(cls, settings: Settings) -> LakeConfig:
        return cls(
            prefix=settings.S3_PREFIX,
            group=settings.KAFKA_GROUP_ID,
            batch_rows=settings.S3_BATCH_SIZE,
            batch_age_sec=settings.S3_BATCH_TIMEOUT_SEC,
            spill_bytes=settings.S3_PART_SIZE_MB * 1024 * 1024,
            retry_max_backoff_sec=settings.RETRY_MAX_BACKOFF_SEC,
            encoder=Encoder.of(settings),
        )
