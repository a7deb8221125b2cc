"""Every log event of the recorder pod, declared once with its level, fields and the metrics it
updates (as Vector's `internal_events`): a call site emits the event, not a log line and a
metric change apart.

Owns `EVENTS` (the README's log-event table is generated from it and a test checks every log
call in `recorder/` against it) and `emit`. Metrics that are sampled rather than caused by an
event (buffer sizes, lag, health) are set directly from recorder.runtime.metrics.

Over 400 lines because it is the declaration table of every log event (one entry each, with its
fields and metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from prometheus_client import Counter, Gauge

from recorder.runtime import metrics

Level = Literal["debug", "info", "warning", "error"]
Fields = Mapping[str, Any]

log = structlog.get_logger("recorder")


@dataclass(frozen=True, slots=True)
class Const:
    """A label value that is the same at every emission (not taken from a field)."""

    value: str


@dataclass(frozen=True, slots=True)
class Each:
    """A label taken from each item of a list field: the update is applied once per item."""

    field: str


LabelSource = str | Const | Each  # a str is the name of the field holding the label value


@dataclass(frozen=True, slots=True)
class Update:
    """One metric change an event makes: `op` of `amount` (a constant, or the name of the
    field holding it, or a function of the fields) on the child named by `labels`."""

    metric: Counter | Gauge
    op: Literal["inc", "dec", "set"]
    amount: float | str | Callable[[Fields], float] = 1
    labels: tuple[LabelSource, ...] = ()

    def apply(self, fields: Fields) -> None:
        if callable(self.amount):
            value = float(self.amount(fields))
        elif isinstance(self.amount, str):
            value = float(fields[self.amount])
        else:
            value = float(self.amount)
        for labels in self._label_values(fields):
            child = self.metric.labels(*labels) if labels else self.metric
            if self.op == "set":
                assert isinstance(child, Gauge)
                child.set(value)
            elif self.op == "dec":
                assert isinstance(child, Gauge)
                child.dec(value)
            else:
                child.inc(value)

    def _label_values(self, fields: Fields) -> Iterable[tuple[str, ...]]:
        each = [s for s in self.labels if isinstance(s, Each)]
        items: list[Any] = list(fields[each[0].field]) if each else [None]
        for item in items:
            values = []
            for source in self.labels:
                if isinstance(source, Const):
                    values.append(source.value)
                elif isinstance(source, Each):
                    values.append(str(item))
                else:
                    values.append(str(fields[source]))
            yield tuple(values)

    @property
    def metric_name(self) -> str:
        name: str = self.metric._name  # what the registry exports, without the type's suffix
        return f"{name}_total" if isinstance(self.metric, Counter) else name


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    level: Level
    description: str
    fields: tuple[str, ...] = ()
    updates: tuple[Update, ...] = field(default=())


EVENTS: dict[str, Event] = {}


def _event(
    name: str,
    level: Level,
    description: str,
    fields: Iterable[str] = (),
    *updates: Update,
) -> Event:
    if name in EVENTS:
        raise ValueError(f"log event {name!r} declared twice")
    event = Event(name, level, description, tuple(fields), updates)
    EVENTS[name] = event
    return event


def emit(event: Event, *, exc_info: BaseException | bool | None = None, **fields: Any) -> None:
    """Log `event` with `fields` at its level and apply its metric updates."""
    for update in event.updates:
        update.apply(fields)
    if exc_info is not None:
        fields["exc_info"] = exc_info
    getattr(log, event.level)(event.name, **fields)


def _any_paused(fields: Fields) -> float:
    return 1.0 if fields["consumers_paused"] else 0.0


TOPIC_PARTITION = ("topic", "partition")

# --- the coordinator (recorder.pipeline) ------------------------------------------------------
RECORDER_STARTED = _event(
    "recorder_started",
    "info",
    "Joined the Kafka group and consuming: the topics, the enabled sinks, the consumers.",
    ("topics", "sinks", "consumers"),
)
RECORDER_PAUSED = _event(
    "recorder_paused",
    "warning",
    "PAUSED is true: the consumers keep their partitions but fetch nothing and record nothing "
    "until the recorder runs with PAUSED=false (the readiness part `paused`).",
    ("consumers",),
    Update(metrics.PAUSED, "set", 1),
)
RECORDER_FAILED = _event(
    "recorder_failed",
    "error",
    "A long-running task died: the recorder shuts down and exits with 1; a restart replays "
    "from the stored progress.",
    ("reason",),
)
SHUTDOWN_DEADLINE_EXCEEDED = _event(
    "shutdown_deadline_exceeded",
    "error",
    "The buffers did not flush within their share of SHUTDOWN_TIMEOUT_SEC (`seconds`; the rest "
    "is kept for committing, leaving the group and closing the stores): what is still "
    "`buffered` is left unrecorded and replayed by the next owner; the exit code is 3.",
    ("seconds", "buffered"),
)
STARTUP_ABANDONED = _event(
    "startup_abandoned",
    "warning",
    "A stop came before start-up completed: the `step` it was at (a store connecting or "
    "migrating, Kafka connecting, joining the group, loading progress) and the requests "
    "`waiting_for` a store are given up at once (nothing is buffered yet); the exit code is 4.",
    ("step", "waiting_for", "seconds"),
)
SHUTDOWN_STEP_CUT = _event(
    "shutdown_step_cut",
    "warning",
    "A last step of the shutdown (`start-up` unwinding, `commit`, `leave_group`, closing a "
    "store) did not finish before the deadline: it is cancelled and not waited for (progress "
    "is recorded only in committed writes, so nothing is lost); the exit code is 3.",
    ("step", "seconds"),
)
SHUTDOWN_STEP_FAILED = _event(
    "shutdown_step_failed",
    "warning",
    "A last step of the shutdown (closing a store or the dead-letter producer) failed; the "
    "shutdown goes on.",
    ("step", "error"),
)
CONSUMER_STOP_FAILED = _event(
    "consumer_stop_failed",
    "warning",
    "Leaving the consumer group failed (best effort).",
    ("error",),
)
RECORDER_STOPPED = _event(
    "recorder_stopped",
    "info",
    "Shutdown finished: the `phase` the stop found (starting or running), whether every buffer "
    "was flushed, the records `left` unrecorded per sink (replayed by the next owner), the "
    "steps the deadline `cut`, the `exit_code`, and the `seconds` since the stop.",
    ("phase", "flushed", "left", "cut", "exit_code", "seconds"),
)
REVOKE_ABANDONED = _event(
    "revoke_abandoned",
    "warning",
    "Revoked partitions did not flush within the revocation deadline: their work is "
    "abandoned (the new owner replays it).",
    ("partitions",),
)
PARTITIONS_REVOKED = _event(
    "partitions_revoked",
    "info",
    "A rebalance took partitions away, after their buffers were flushed and committed.",
    ("count", "seconds"),
    Update(metrics.ASSIGNED_PARTITIONS, "dec", "count"),
)
ASSIGNMENT_FAILED = _event(
    "assignment_failed",
    "error",
    "The progress of newly assigned partitions could not be loaded: they are held (paused, "
    "unready) and retried with backoff.",
    ("partitions", "error"),
    Update(metrics.STORE_ERRORS, "inc", labels=(Const("pipeline"), Const("assign"))),
)
PARTITIONS_ASSIGNED = _event(
    "partitions_assigned",
    "info",
    "Newly assigned partitions were seeked to the smallest progress of the sinks (each "
    "sink's progress shown); `halted` of them lie past their log end.",
    ("count", "halted", "progress"),
)
PARTITION_RELEASED = _event(
    "partition_released",
    "info",
    "A held or halted partition was taken over (its progress loads and lies within its log).",
    TOPIC_PARTITION,
    Update(metrics.PARTITION_HALTED, "set", 0, TOPIC_PARTITION),
)
RECORDS_LOST = _event(
    "records_lost",
    "error",
    "Records [first, end) of a partition left the log (retention, DeleteRecords) before any "
    "sink wrote them: the partition goes on at its log start (ON_LOG_TRUNCATION=resume).",
    (*TOPIC_PARTITION, "first", "end", "count", "reason"),
    Update(metrics.RECORDS_LOST, "inc", "count", (*TOPIC_PARTITION, "reason")),
)
PARTITION_HALTED = _event(
    "partition_halted",
    "error",
    "A sink's progress lies beyond the partition's log end (topic recreated, unclean leader "
    "election), counts another topic ID than the topic's (recreated), is gone from one store "
    "while the other holds some, or lies below the log start with ON_LOG_TRUNCATION=halt: the "
    "partition halts until `datarecorder reset-progress`.",
    (*TOPIC_PARTITION, "progress", "log_end", "reason"),
    Update(metrics.PARTITION_HALTED, "set", 1, TOPIC_PARTITION),
)
HELD_PARTITIONS_RETRY_FAILED = _event(
    "held_partitions_retry_failed",
    "warning",
    "Taking held partitions over failed again; retried with a longer backoff.",
    ("error",),
)
CONSUMER_PAUSED = _event(
    "consumer_paused",
    "info",
    "Buffers reached MAX_BUFFER_SIZE or MAX_BUFFER_BYTES: the consumer pauses and every "
    "buffer flushes now.",
    ("buffered", "buffered_bytes", "consumers_paused"),
    Update(metrics.CONSUMER_PAUSED, "set", _any_paused),
)
CONSUMER_RESUMED = _event(
    "consumer_resumed",
    "info",
    "Buffers have room again: the consumer resumes.",
    ("buffered", "buffered_bytes", "consumers_paused"),
    Update(metrics.CONSUMER_PAUSED, "set", _any_paused),
)
LATE_BARS_REFRESHED = _event(
    "late_bars_refreshed",
    "info",
    "TimescaleDB mode: the buckets [start, end) of a continuous aggregate that late ticks "
    "touched outside its refresh policy's window were refreshed, so its bars include them.",
    ("sink", "view", "start", "end"),
)
LATE_BARS_REFRESH_FAILED = _event(
    "late_bars_refresh_failed",
    "warning",
    "TimescaleDB mode: refreshing the buckets of late ticks failed; the range is kept and "
    "tried again.",
    ("sink", "view", "error"),
)
RANGE_COMPLETING = _event(
    "recorded_range_completing",
    "warning",
    "Buffers are full, but a partition's pending lake range (recorded by a writer with larger "
    "buffers: S3_BATCH_SIZE, MAX_BUFFER_SIZE or MAX_BUFFER_BYTES were lowered) can only be "
    "flushed whole: that partition is fed on past the limits until the range completes; the "
    "others stay paused and /ready names it.",
    (*TOPIC_PARTITION, "first", "end"),
)
CONSUMER_FAILED = _event(
    "consumer_failed",
    "error",
    "The consume loop died of an unexpected error: the recorder stops and exits with 1.",
)
PARTITION_RESYNC = _event(
    "partition_resync",
    "info",
    "A sink dropped a partition's buffer (fenced, failed, refused dead letters): the consumer "
    "seeks back to the stored progress.",
    (*TOPIC_PARTITION, "position"),
)
DEAD_LETTERS_ACCEPTED = _event(
    "dead_letters_accepted",
    "info",
    "A partition whose dead letters were refused got them written: it is read again.",
    TOPIC_PARTITION,
)

# --- Kafka (recorder.kafka.source, recorder.kafka.dlq) -------------------------------------------------------
SEEK_SKIPPED_NOT_ASSIGNED = _event(
    "seek_skipped_not_assigned",
    "info",
    "A seek for a partition no longer assigned was skipped (revoked meanwhile).",
    TOPIC_PARTITION,
)
COMMIT_SKIPPED = _event(
    "commit_skipped",
    "info",
    "Kafka refused an offset commit during a rebalance; the next commit carries it.",
    ("reason",),
)
COMMIT_FAILED = _event(
    "commit_failed", "warning", "An offset commit failed; the next one carries it.", ("error",)
)
TOPIC_CONFIGS_NOT_READ = _event(
    "topic_configs_not_read",
    "warning",
    "The topics' max.message.bytes could not be read (e.g. not authorized): the default is "
    "assumed for sizing the dead-letter topics.",
    ("error",),
)
DLQ_TOPIC_TOO_SMALL = _event(
    "dlq_topic_too_small",
    "warning",
    "A dead-letter topic cannot hold the largest record of its source topic; `hint` is the "
    "command that fixes it.",
    ("topic", "max_message_bytes", "needed", "hint"),
)
DLQ_TOPICS_CREATED = _event(
    "dlq_topics_created", "info", "Dead-letter topics created at start.", ("topics",)
)
DLQ_TOPICS_NOT_CREATED = _event(
    "dlq_topics_not_created",
    "warning",
    "Dead-letter topics could not be created (e.g. not authorized; the cluster may "
    "auto-create them).",
    ("error",),
)
DLQ_PRODUCER_STOP_FAILED = _event(
    "dlq_producer_stop_failed",
    "warning",
    "Stopping the dead-letter producer after a refusal failed (a fresh one is started).",
    ("error",),
)
DEAD_LETTERS_REFUSED = _event(
    "dead_letters_refused",
    "error",
    "The cluster refused dead letters: their partitions pause, the pod is unready, the send "
    "is retried with backoff.",
    ("error", "letters", "topics"),
    Update(metrics.DEAD_LETTER_FAILURES, "inc", labels=(Each("topics"),)),
)
DEAD_LETTER = _event(
    "dead_letter",
    "debug",
    "One record was sent to the dead-letter topic, with the reason it was rejected.",
    (*TOPIC_PARTITION, "offset", "reason", "error"),
)
DEAD_LETTERS_SENT = _event(
    "dead_letters_sent",
    "debug",
    "The dead-letter topic acknowledged `letters` dead letters of one source topic and reason "
    "(one event per fetch, topic and reason; `dead_letter` names each record).",
    ("topic", "reason", "letters"),
    Update(metrics.DEAD_LETTERS, "inc", amount="letters", labels=("topic", "reason")),
)

# --- process (recorder.cli, recorder.runtime.supervise) -----------------------------------------------
SETTINGS = _event(
    "settings",
    "info",
    "The settings the recorder runs with at start: one field per variable of the "
    "configuration reference, secrets masked.",
)
SHUTDOWN_REQUESTED = _event(
    "shutdown_requested",
    "info",
    "SIGTERM or SIGINT: flush and commit within the deadline, then exit. `state` is where the "
    "signal found the recorder: its `phase` (starting, running), start-up `step`, the requests "
    "`waiting_for` a store, partitions `assigning` (loading progress), `held` or `halted`, "
    "`unhealthy` sinks and the records `buffered` per sink.",
    ("signal", "deadline_seconds", "state"),
)
SHUTDOWN_BACKSTOP = _event(
    "shutdown_backstop",
    "error",
    "The deadline passed with the process still stopping (a step that ignored its "
    "cancellation): it exits at once with `exit_code` (progress is recorded only in committed "
    "writes, so a restart replays what was buffered).",
    ("seconds", "exit_code"),
)
SHUTDOWN_FORCED = _event(
    "shutdown_forced",
    "warning",
    "A second signal: exit at once (progress is only recorded in committed writes, so a "
    "restart replays what was buffered).",
    ("signal",),
)
TASK_FAILED = _event(
    "task_failed",
    "error",
    "A long-running task ended with an exception (the traceback follows); the recorder stops.",
    ("task",),
)

# --- stores (recorder.sinks, recorder.sinks.timescale.migrate, recorder.sinks.timescale.retention, recorder.sinks.timescale.compression) --------
STORE_RETRY = _event(
    "store_retry",
    "warning",
    "A store or Kafka request failed with a retriable error; retried with backoff (`what` "
    "names the request).",
    ("what", "error"),
)
SINK_STARTED = _event(
    "sink_started",
    "info",
    "A sink is connected and writing (database mode and writers, or the lake and group).",
    ("sink", "mode", "writers", "lake", "group"),
)
FLUSH = _event(
    "flush",
    "info",
    "A sink made a batch durable (rows, partitions or files, bytes, seconds).",
    ("sink", "topic", "partition", "partitions", "rows", "files", "bytes", "seconds", "fenced"),
)
FLUSH_FAILED = _event(
    "flush_failed",
    "error",
    "A flush failed with an error retrying does not fix; the sink reports unhealthy, backs "
    "off and replays from its stored progress.",
    ("sink", "topic", "partition", "partitions", "rows", "error", "retry_in_seconds"),
)
BATCH_FENCED = _event(
    "batch_fenced",
    "warning",
    "Stored progress moved under a batch (another owner wrote the partition: this writer is "
    "a zombie): the batch is dropped and the partition resyncs.",
    ("sink", "topic", "partition", "expected", "stored", "batch", "dropped_rows"),
)
BATCH_ADOPTS_RECORDED_RANGE = _event(
    "batch_adopts_recorded_range",
    "warning",
    "The lake's progress records another flush range for this partition: the batch is "
    "dropped and exactly the recorded range is flushed (rule 4).",
    ("sink", "topic", "partition", "batch", "stored", "dropped_rows"),
)
ICEBERG_COMMIT_CONFLICT = _event(
    "iceberg_commit_conflict",
    "info",
    "Another writer committed to an Iceberg table between this writer's read of the progress "
    "and its commit: the commit was refused whole; the progress is read again and checked "
    "again (rule 1), and the commit retried with what still applies.",
    ("table", "attempt", "partitions"),
    Update(metrics.ICEBERG_COMMIT_CONFLICTS, "inc", labels=("table",)),
)
DB_READ_ONLY = _event(
    "db_read_only",
    "warning",
    "The database is read-only (a failover's demoted primary): the pool reconnects.",
    ("sink", "error", "action"),
)
PARTITION_MISSING = _event(
    "partition_missing",
    "warning",
    "Plain PostgreSQL had no table partition for a row's day: it is created and the write retried.",
    ("sink", "error"),
)
PARTITION_MAINTENANCE_FAILED = _event(
    "partition_maintenance_failed",
    "warning",
    "Plain PostgreSQL: creating the coming days' table partitions failed; tried again next "
    "period (a writer still creates a missing day itself).",
    ("sink", "error"),
)
RETENTION_FAILED = _event(
    "retention_failed",
    "warning",
    "A DB_RETENTION_DAYS run failed; tried again at the next interval.",
    ("sink", "error"),
)
RETENTION_DROPPED = _event(
    "retention_dropped",
    "info",
    "Retention dropped a table's pieces older than DB_RETENTION_DAYS.",
    ("table", "mode", "pieces"),
)
COMPRESSION_POLICY = _event(
    "compression_policy",
    "info",
    "A TimescaleDB compression policy was set for a table.",
    ("table", "after_days"),
)
COMPRESSION_UNAVAILABLE = _event(
    "compression_unavailable",
    "warning",
    "DB_COMPRESS_AFTER_DAYS is set but the database mode has no compression.",
    ("mode", "setting"),
)
TIMESCALEDB_UNUSABLE = _event(
    "timescaledb_unusable",
    "warning",
    "The timescaledb extension is installed but cannot be created: plain PostgreSQL mode.",
    ("error", "fallback"),
)
MIGRATION_APPLIED = _event(
    "migration_applied", "info", "One SQL migration was applied.", ("version", "name", "mode")
)


def event_rows() -> list[tuple[str, str, str, str, str]]:
    """(event, level, fields, metrics, meaning) for the README's log-event table."""
    rows: list[tuple[str, str, str, str, str]] = []
    for event in EVENTS.values():
        names = sorted({u.metric_name for u in event.updates})
        rows.append(
            (
                event.name,
                event.level,
                ", ".join(event.fields),
                ", ".join(names),
                event.description,
            )
        )
    return rows
