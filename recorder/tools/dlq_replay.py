"""`datarecorder dlq replay`: record the dead letters that today's rules accept, exactly once.

Owns the replay's configuration of an ordinary recorder (recorder.pipeline.Recorder, built from
recorder.app's parts): its one source is the dead-letter topic, read by its own consumer group
(`<KAFKA_GROUP_ID>.dlq-replay`), and each sink keeps its own progress of that topic as for any
other (the database's `recorder_offsets` row of `market.tick.dlq[0]`, the lake's progress object
under the replay group), so a second run, or a run after a SIGKILL, records nothing twice. A
dead letter's value is the original bytes; it is decoded and validated by the recorder's own
path with the original record's Kafka timestamp (read back from the source topic while the log
holds it), and written to the tables and lake folders of the source topic's kind. Records that
still fail are counted by reason and stay where they are (nothing is dead-lettered again).
Records that --reason / --since exclude are passed over: progress moves past them like past any
record handled, so a later replay does not see them either. The run stops once every sink's
progress reached the log end offsets the dead-letter topic had when it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from recorder.app import buffer_limits, build_sinks, container_memory_limit
from recorder.core.offsets import TP
from recorder.core.partitions import PartitionTable
from recorder.kafka.dlq import HEADROOM_BYTES, DeadLetter, DeadLetters, origin_of, read_records
from recorder.kafka.options import client_options
from recorder.kafka.source import Fetched, KafkaSource
from recorder.pipeline import Recorder
from recorder.runtime.settings import ConfigError, Settings, TopicKind, parse_rfc3339_ms, topic_kind

GROUP_SUFFIX = ".dlq-replay"
POLL_SEC = 0.2


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a replay takes: by reason label (None: any) and by the dead letter's
    own Kafka timestamp, when it was dead-lettered (None: any time)."""

    reasons: frozenset[str] | None = None
    since_ms: int | None = None

    def takes(self, reason: str | None, timestamp_ms: int) -> bool:
        if self.reasons is not None and reason not in self.reasons:
            return False
        return self.since_ms is None or timestamp_ms >= self.since_ms


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as the coordinator reads it: the original key and bytes, at the dead
    letter's offset, stamped with the original record's Kafka timestamp."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass
class Tally:
    """What this run did with the dead letters it read (a partition fed again after a dropped
    buffer is counted again)."""

    read: int = 0
    passed_over: int = 0
    failing: Counter[str] = field(default_factory=Counter)
    letters_stamp: int = 0  # originals no longer in Kafka: stamped with the letter's timestamp


def source_kind(settings: Settings, dlq_topic: str) -> TopicKind:
    """The kind of record a dead-letter topic holds: its source topic's."""
    if not dlq_topic.endswith(settings.DLQ_SUFFIX) or dlq_topic == settings.DLQ_SUFFIX:
        raise ConfigError(
            f"--topic {dlq_topic!r}: not a dead-letter topic (its name ends with "
            f"DLQ_SUFFIX={settings.DLQ_SUFFIX!r})"
        )
    source = dlq_topic.removesuffix(settings.DLQ_SUFFIX)
    known = settings.topics()
    if source in known:
        return known[source]
    try:
        return topic_kind(source)
    except ValueError as exc:
        raise ConfigError(f"--topic {dlq_topic!r}: {exc}") from None


def replay_settings(settings: Settings, dlq_topic: str) -> Settings:
    """The recorder settings of a replay: the dead-letter topic as its only source, its own
    group, from the topic's start where it has no progress yet, no HTTP server."""
    kind = source_kind(settings, dlq_topic)
    return settings.model_copy(
        update={
            "KAFKA_TOPICS": [f"{dlq_topic}:{kind.value}"],
            "KAFKA_GROUP_ID": settings.KAFKA_GROUP_ID + GROUP_SUFFIX,
            "KAFKA_AUTO_OFFSET_RESET": "earliest",
            "START_FROM": "",
            "NUM_CONSUMERS": 1,
            "HTTP_PORT": 0,
        }
    )


def reached(progress: Sequence[Mapping[TP, int | None]], ends: Mapping[TP, int]) -> bool:
    """Whether every sink's progress of every partition reached its end."""
    return all(_at_least(p.get(tp), end) for p in progress for tp, end in ends.items())


def _at_least(offset: int | None, end: int) -> bool:
    return offset is not None and offset >= end


def fetched_all(fetched: Mapping[TP, int | None], ends: Mapping[TP, int], done: set[TP]) -> bool:
    """Whether every partition not yet `done` was fetched up to its end (what is left is in
    the sinks' buffers: flush them rather than wait for their timers)."""
    return all((fetched.get(tp) or 0) >= end for tp, end in ends.items() if tp not in done)


class CountingDeadLetters(DeadLetters):
    """The replay's dead-letter queue: a record that still fails is counted, never sent."""

    def __init__(self, settings: Settings, options: dict[str, object], tally: Tally) -> None:
        super().__init__(settings, options)
        self._tally = tally

    async def start(self, topics: Sequence[str]) -> None:
        return None  # no `<dlq>.dlq` topic: nothing is dead-lettered twice

    async def send_many(self, letters: Sequence[DeadLetter]) -> None:
        self._tally.failing.update(d.reason for d in letters)

    async def close(self) -> None:
        return None


class ReplaySource(KafkaSource):
    """The dead-letter topic as a source: selected letters, as their original records."""

    def __init__(
        self,
        settings: Settings,
        options: dict[str, object],
        selection: Selection,
        tally: Tally,
    ) -> None:
        super().__init__(settings, options, 0)
        self._options = options
        self._selection = selection
        self._tally = tally
        self._max_bytes = max(settings.MAX_MESSAGE_BYTES, 1_048_576) + HEADROOM_BYTES

    async def fetch(self, timeout_ms: int, max_records: int) -> dict[TP, list[Fetched]]:
        """Letters passed over are left out of their partition's list; `fetched_end` still
        covers them, so progress moves past them."""
        data = await super().fetch(timeout_ms, max_records)
        taken: dict[TP, list[tuple[Any, Any]]] = {}
        wanted: list[tuple[str, int, int]] = []
        for tp, messages in data.items():
            taken[tp] = []
            for m in messages:
                self._tally.read += 1
                origin = origin_of(getattr(m, "headers", None))
                if not self._selection.takes(origin.reason, int(m.timestamp)):
                    self._tally.passed_over += 1
                    continue
                at = None
                if origin.topic and origin.partition is not None and origin.offset is not None:
                    at = (origin.topic, origin.partition, origin.offset)
                    wanted.append(at)
                taken[tp].append((m, at))
        originals = await read_records(self._options, wanted, self._max_bytes)
        out: dict[TP, list[Fetched]] = {}
        for tp, items in taken.items():
            out[tp] = []
            for m, at in items:
                original = originals.get(at) if at is not None else None
                if original is None:
                    self._tally.letters_stamp += 1
                stamp = int(m.timestamp if original is None else original.timestamp)
                key = original.key if original is not None else m.key
                out[tp].append(Letter(int(m.offset), stamp, key, m.value))
        return out


async def log_ends(settings: Settings, topic: str) -> dict[TP, int]:
    consumer = AIOKafkaConsumer(topic, enable_auto_commit=False, **client_options(settings))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ConfigError(f"--topic {topic!r}: no such topic on {settings.KAFKA_BROKERS}")
        wanted = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(wanted)
    finally:
        await consumer.stop()
    return {TP(tp.topic, tp.partition): int(ends[tp]) for tp in wanted}


async def _until_replayed(
    recorder: Recorder, source: ReplaySource, ends: Mapping[TP, int], run: asyncio.Task[None]
) -> bool:
    while not run.done():
        if recorder.health.started:
            progress = [sink.progress() for sink in recorder.sinks]
            if reached(progress, ends):
                return True
            done = {tp for tp in ends if reached(progress, {tp: ends[tp]})}
            fetched = {tp: source.fetched_end(tp) for tp in ends}
            if fetched_all(fetched, ends, done):
                await asyncio.gather(*(sink.flush_all() for sink in recorder.sinks))
        await asyncio.sleep(POLL_SEC)
    return False


def render(
    dlq_topic: str,
    group: str,
    ends: Mapping[TP, int],
    sinks: Collection[str],
    tally: Tally,
    finished: bool,
) -> str:
    parts = ", ".join(f"{tp.topic}[{tp.partition}] to {end}" for tp, end in sorted(ends.items()))
    lines = [
        f"dead-letter replay of {dlq_topic} into {', '.join(sinks)} (consumer group {group})",
        f"log end offsets at start: {parts}",
        f"read this run: {tally.read} dead letters; passed over (not selected by "
        f"--reason/--since, progress moves past them): {tally.passed_over}; still failing "
        f"(left in {dlq_topic}): {sum(tally.failing.values())}",
    ]
    for reason, n in sorted(tally.failing.items()):
        lines.append(f"  still failing: {reason}: {n}")
    if tally.letters_stamp:
        lines.append(
            f"{tally.letters_stamp} original record(s) no longer in Kafka: stamped with the dead "
            "letter's Kafka timestamp"
        )
    lines.append(
        "replayed: every sink's progress reached the log end offsets above"
        if finished
        else "not finished: the replay stopped before every sink reached the log end offsets "
        "above; run it again (it goes on from the stored progress)"
    )
    return "\n".join(lines)


async def replay(
    settings: Settings, dlq_topic: str, reasons: Collection[str] | None, since: str | None
) -> tuple[str, bool]:
    """Replay `dlq_topic` once up to its current end; the report and whether it got there."""
    since_ms = None
    if since is not None:
        try:
            since_ms = parse_rfc3339_ms(since)
        except ValueError:
            raise ConfigError(
                f"--since {since!r}: expected an RFC 3339 date-time with a zone, "
                "e.g. 2026-12-01T00:00:00Z"
            ) from None
    replaying = replay_settings(settings, dlq_topic)
    selection = Selection(frozenset(reasons) if reasons else None, since_ms)
    ends = await log_ends(replaying, dlq_topic)
    options = client_options(replaying)
    tally = Tally()
    dead_letters = CountingDeadLetters(replaying, options, tally)
    table = PartitionTable()
    sinks = build_sinks(replaying, replaying.topics(), dead_letters, table)
    source = ReplaySource(replaying, options, selection, tally)
    limits = buffer_limits(replaying, container_memory_limit())
    recorder = Recorder(replaying, sinks, [source], dead_letters, table, limits)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, recorder.stop)
    run = asyncio.create_task(recorder.run(), name="replay")
    try:
        finished = await _until_replayed(recorder, source, ends, run)
    finally:
        recorder.stop()
        with contextlib.suppress(Exception):
            await run
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    finished = finished and recorder.outcome().flushed is not False
    group = replaying.KAFKA_GROUP_ID
    report = render(dlq_topic, group, ends, [s.name for s in sinks], tally, finished)
    return report, finished
