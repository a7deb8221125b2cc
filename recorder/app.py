"""Builds a recorder from Settings: the sinks, the lake, the Kafka sources, the dead-letter
queue and the partition table they share, wired to the coordinator (recorder.pipeline).

Owns which sinks are enabled, where their progress and resync callbacks go (the commit
policy decides which sink's progress Kafka's committed offset follows) and the buffer limits
(MAX_BUFFER_BYTES or a share of the container's memory limit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from recorder.coordinator.ports import SystemClock
from recorder.core import backpressure
from recorder.core.backpressure import BufferLimits
from recorder.core.commit import commit_offset, committing_sink
from recorder.core.offsets import TP
from recorder.core.partitions import PartitionTable
from recorder.kafka.dlq import DeadLetters
from recorder.kafka.options import client_options
from recorder.kafka.source import KafkaSource
from recorder.pipeline import Recorder
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, Sink
from recorder.sinks.iceberg.config import SINK as ICEBERG_SINK
from recorder.sinks.lake import sink as lake_sink
from recorder.sinks.lake.store import make_lake
from recorder.sinks.timescale import sink as timescale_sink

# cgroup v2, then v1: a container sees its own cgroup at these paths.
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def container_memory_limit(paths: Sequence[Path] = CGROUP_MEMORY_LIMITS) -> int | None:
    """The container's memory limit, None when unlimited or not in a cgroup."""
    for path in paths:
        try:
            return backpressure.parse_memory_max(path.read_text())
        except OSError:
            continue
    return None


def buffer_limits(settings: Settings, memory_limit: int | None) -> BufferLimits:
    return BufferLimits(
        settings.MAX_BUFFER_SIZE,
        backpressure.buffer_bytes_limit(settings.MAX_BUFFER_BYTES, memory_limit),
    )


def enabled_sinks(settings: Settings) -> list[str]:
    """Names of the sinks the settings enable, in the order they are offered records."""
    names = []
    if settings.DB_WRITE_ENABLED:
        names.append(timescale_sink.SINK)
    if settings.S3_WRITE_ENABLED:
        names.append(ICEBERG_SINK if settings.LAKE_FORMAT == "iceberg" else lake_sink.SINK)
    if not names:
        raise ValueError("both sinks are disabled (DB_WRITE_ENABLED=false, S3_WRITE_ENABLED=false)")
    return names


def progress_to(table: PartitionTable, sink: str, committing: str) -> ProgressCallback:
    """The progress callback of one sink: pending commits in the table, per the policy."""

    def on_progress(tp: TP, offset: int) -> None:
        commit = commit_offset(sink, offset, committing)
        if commit is not None:
            table.progress(tp, commit)

    return on_progress


def build_sinks(
    settings: Settings,
    topics: Mapping[str, TopicKind],
    dead_letters: DeadLetters,
    table: PartitionTable,
) -> list[Sink]:
    names = enabled_sinks(settings)
    committing = committing_sink(names)
    sinks: list[Sink] = []
    for name in names:
        on_progress = progress_to(table, name, committing)
        if name == timescale_sink.SINK:
            sinks.append(
                timescale_sink.TimescaleSink(
                    settings, topics, dead_letters, on_progress, table.resync
                )
            )
        elif name == ICEBERG_SINK:
            # Imported here: pyiceberg and SQLAlchemy cost a third of a second of CPU at start,
            # which the plain Parquet lake never needs.
            from recorder.sinks.iceberg.sink import IcebergSink

            sinks.append(IcebergSink(settings, topics, on_progress, table.resync))
        else:
            lake = make_lake(settings)
            sinks.append(lake_sink.S3Sink(settings, topics, lake, on_progress, table.resync))
    return sinks


def build_recorder(settings: Settings) -> Recorder:
    """Everything one recorder process runs, from its settings (no I/O until `start`)."""
    topics = settings.topics()
    options = client_options(settings)
    dead_letters = DeadLetters(settings, options)
    table = PartitionTable()
    sinks = build_sinks(settings, topics, dead_letters, table)
    sources = [KafkaSource(settings, options, i) for i in range(settings.NUM_CONSUMERS)]
    limits = buffer_limits(settings, container_memory_limit())
    return Recorder(settings, sinks, sources, dead_letters, table, limits, SystemClock())
