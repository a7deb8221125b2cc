"""The operator's sink names are the recorder's, and the HPA scales on the committing sink."""

from __future__ import annotations

import dataclasses

import pytest
from datarecorder_operator import rendering, sinks
from datarecorder_operator.spec import RecorderSpec

from recorder.core.commit import committing_sink
from recorder.sinks.lake.config import SINK as LAKE_SINK
from recorder.sinks.timescale.config import SINK as TIMESCALE_SINK
from tests.unit.operator.helpers import example_spec


def with_sinks(spec: RecorderSpec, *, database: bool, lake: bool) -> RecorderSpec:
    return dataclasses.replace(
        spec,
        timescaledb=dataclasses.replace(spec.timescaledb, write_enabled=database),
        s3=dataclasses.replace(spec.s3, enabled=lake, bucket=spec.s3.bucket or "lake"),
    )


def test_sink_names_are_the_recorders() -> None:
    # The `sink` label of the recorders' metrics: a name of the operator's own would select none.
    assert sinks.SINKS == (TIMESCALE_SINK, LAKE_SINK)


@pytest.mark.parametrize(("database", "lake"), [(True, True), (True, False), (False, True)])
def test_the_hpa_scales_on_the_sink_the_committed_offsets_follow(
    database: bool, lake: bool
) -> None:
    spec = example_spec("hpa.yaml")
    spec = with_sinks(spec, database=database, lake=lake)
    enabled = sinks.enabled_sinks(spec)
    assert enabled == tuple(s for s, on in zip(sinks.SINKS, (database, lake), strict=True) if on)
    hpa = next(c for c in rendering.render_children(spec) if c["kind"] == "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    selector = metric["pods"]["metric"]["selector"]
    # The recorder commits the progress of this sink to Kafka: the operator's own scaler reads
    # that lag, so the HPA must scale on the same one.
    assert selector == {"matchLabels": {"sink": committing_sink(list(enabled))}}


def test_a_lake_only_recorder_is_not_scaled_on_a_disabled_database() -> None:
    spec = with_sinks(example_spec("hpa.yaml"), database=False, lake=True)
    hpa = rendering.render_hpa(spec)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["selector"] == {
        "matchLabels": {"sink": "s3"}
    }
