"""Every Prometheus metric the recorder exports, declared once.

Dashboards, alert rules and the operator's HPA refer to these names; a test checks that they
only use names declared here. `ALL_METRIC_NAMES` is read from the registry, not listed again.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECORDS_CONSUMED = Counter(
    "datarecorder_records_consumed",
    "Kafka records fetched by the consumer, per topic.",
    ["topic"],
    registry=REGISTRY,
)
RECORDS_LOST = Counter(
    "datarecorder_records_lost",
    "Kafka records that left the log before any sink wrote them (retention or DeleteRecords "
    "moved the log start past the sinks' progress), per topic, partition and reason.",
    ["topic", "partition", "reason"],
    registry=REGISTRY,
)
RECORDS_WRITTEN = Counter(
    "datarecorder_records_written",
    "Records made durable by a sink (rows committed / rows in uploaded files), per topic and sink.",
    ["topic", "sink"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "datarecorder_dead_letters",
    "Records sent to the dead-letter topic, per source topic and reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
DEAD_LETTER_FAILURES = Counter(
    "datarecorder_dead_letter_failures",
    "Dead-letter sends the cluster refused (the partitions pause and retry), per source topic.",
    ["topic"],
    registry=REGISTRY,
)
DEAD_LETTER_BLOCKED = Gauge(
    "datarecorder_dead_letter_blocked_partitions",
    "Partitions paused because their dead letters cannot be written (the pod is unready).",
    registry=REGISTRY,
)
FLUSHES = Counter(
    "datarecorder_flushes",
    "Batches flushed by a sink, per sink and outcome (ok, retry, fenced, failed).",
    ["sink", "outcome"],
    registry=REGISTRY,
)
FLUSH_DURATION = Histogram(
    "datarecorder_flush_duration_seconds",
    "Time to make one batch durable (COPY + progress commit, or Parquet upload + progress).",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BUFFER_RECORDS = Gauge(
    "datarecorder_buffer_records",
    "Records held in a sink's buffers, not yet durable.",
    ["sink"],
    registry=REGISTRY,
)
BUFFER_LIMIT = Gauge(
    "datarecorder_buffer_limit_records",
    "MAX_BUFFER_SIZE: buffered records at which the consumer pauses.",
    registry=REGISTRY,
)
BUFFER_BYTES = Gauge(
    "datarecorder_buffer_bytes",
    "Estimated decoded bytes held in a sink's buffers, not yet durable.",
    ["sink"],
    registry=REGISTRY,
)
BUFFER_LIMIT_BYTES = Gauge(
    "datarecorder_buffer_limit_bytes",
    "MAX_BUFFER_BYTES (or its derived default): buffered bytes at which the consumer pauses.",
    registry=REGISTRY,
)
CONSUMER_PAUSED = Gauge(
    "datarecorder_consumer_paused",
    "1 while the consumer is paused because buffers are full, else 0.",
    registry=REGISTRY,
)
PAUSED = Gauge(
    "datarecorder_paused",
    "1 while the data flow is paused on purpose (PAUSED=true, spec.state paused): nothing is "
    "fetched, lag grows and no lag alert fires; else 0.",
    registry=REGISTRY,
)
PARTITION_LAG = Gauge(
    "datarecorder_partition_lag_records",
    "Records in a partition not yet durable in a sink (high watermark minus sink progress).",
    ["topic", "partition", "sink"],
    registry=REGISTRY,
)
LAG = Gauge(
    "datarecorder_lag_records",
    "Sum of this pod's partition lag per sink; the HPA scales on it (sink=timescaledb).",
    ["sink"],
    registry=REGISTRY,
)
S3_BYTES_UPLOADED = Counter(
    "datarecorder_s3_bytes_uploaded",
    "Bytes of Parquet uploaded to the cold path, per topic.",
    ["topic"],
    registry=REGISTRY,
)
ICEBERG_COMMIT_CONFLICTS = Counter(
    "datarecorder_iceberg_commit_conflicts",
    "Iceberg commits refused because another writer committed to the table first (the "
    "progress is read again, checked again and the commit retried), per table.",
    ["table"],
    registry=REGISTRY,
)
SINK_HEALTHY = Gauge(
    "datarecorder_sink_healthy",
    "1 when a sink's store answers, 0 while it fails (consumer, timescaledb, s3).",
    ["sink"],
    registry=REGISTRY,
)
LAST_FLUSH = Gauge(
    "datarecorder_last_flush_timestamp_seconds",
    "Unix time of a sink's last successful flush.",
    ["sink"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "datarecorder_assigned_partitions",
    "Partitions currently assigned to this pod.",
    registry=REGISTRY,
)
PARTITION_HALTED = Gauge(
    "datarecorder_partition_halted",
    "1 while a partition is halted: a sink's progress lies beyond the log end or counts another "
    "topic ID (topic recreated, unclean leader election), or vanished from one store; resolve "
    "with `datarecorder reset-progress`.",
    ["topic", "partition"],
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "datarecorder_store_errors",
    "Errors from a store that retrying does not fix (permission, missing bucket, corrupt "
    "progress, disk full), by sink and operation; the sink backs off and reports unhealthy.",
    ["sink", "operation"],
    registry=REGISTRY,
)


def exported_names(registry: CollectorRegistry) -> frozenset[str]:
    """The series names a registry exports, by metric type (what dashboards and alerts may
    use): `_total` for counters, `_bucket`/`_sum`/`_count` for histograms (not `_created`)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return frozenset(
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    )


ALL_METRIC_NAMES: frozenset[str] = exported_names(REGISTRY)
