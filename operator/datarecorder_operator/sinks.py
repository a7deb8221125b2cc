"""The recorder's sinks as the operator names them: which a spec enables, which one scales.

Owns the sink names (the `sink` label of the recorders' lag metrics, and `status.lag`'s key);
pure. They are the recorder's own (`recorder.sinks.*.config.SINK`, a unit test holds them equal).
"""

from __future__ import annotations

from typing import Final

from datarecorder_operator.spec import RecorderSpec

TIMESCALEDB: Final = "timescaledb"  # the hot path
S3: Final = "s3"  # the cold path (Parquet)
SINKS: Final = (TIMESCALEDB, S3)


def enabled_sinks(spec: RecorderSpec) -> tuple[str, ...]:
    """The sinks the spec's recorders write to, hot path first (the recorder's order)."""
    enabled = {TIMESCALEDB: spec.timescaledb.write_enabled, S3: spec.s3.enabled}
    return tuple(sink for sink in SINKS if enabled[sink])


def scaling_sink(spec: RecorderSpec) -> str:
    """The sink whose lag the HPA scales on: the one Kafka's committed offset follows (the
    recorder's commit policy, `recorder.core.commit.committing_sink`), so that the HPA and the
    operator's own scaler, which reads the committed offsets, see the same lag. The hot path
    when enabled, else the lake; a spec with no sink records nothing, and keeps the hot path."""
    enabled = enabled_sinks(spec)
    return TIMESCALEDB if TIMESCALEDB in enabled or not enabled else enabled[0]
