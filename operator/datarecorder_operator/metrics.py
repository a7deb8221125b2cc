"""The operator's own Prometheus metrics, declared once, on a registry of their own.

Owns the series (reconciles, their errors and duration, lag reads, scale decisions, recorders
by state) and the `/metrics` endpoint that `operator run --metrics-port` serves.
"""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "datarecorder_operator_reconciles_total",
    "Reconcile passes over a DataRecorder, by trigger (handler: create/update/resume; "
    "resync: the loop) and result (ok, invalid_spec, api_error).",
    ["trigger", "result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "datarecorder_operator_reconcile_duration_seconds",
    "Duration of one reconcile pass, by trigger.",
    ["trigger"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
APPLIES = Counter(
    "datarecorder_operator_child_applies_total",
    "Children written by server-side apply (created, changed or restored), by kind.",
    ["kind"],
    registry=REGISTRY,
)
LAG_READS = Counter(
    "datarecorder_operator_lag_reads_total",
    "Reads of a consumer group's lag from Kafka, by result (ok, error).",
    ["result"],
    registry=REGISTRY,
)
SCALE_DECISIONS = Counter(
    "datarecorder_operator_scale_decisions_total",
    "Replica changes made in autoscaling mode operator, by direction (up, down) and reason.",
    ["direction", "reason"],
    registry=REGISTRY,
)


API_REQUESTS = Counter(
    "datarecorder_operator_api_requests_total",
    "Requests of the operator's own Kubernetes client (not kopf's watches), by HTTP method.",
    ["method"],
    registry=REGISTRY,
)


RECORDERS = Gauge(
    "datarecorder_operator_recorders",
    "DataRecorders the operator reconciles, by what its last pass found: spec.state (running, "
    "paused, stopped), reconcile_paused (annotation datarecorder.dev/paused) or invalid (a spec it "
    "cannot render).",
    ["state"],
    registry=REGISTRY,
)
RECORDER_STATES = ("running", "paused", "stopped", "reconcile_paused", "invalid")


def set_recorders(phases: Iterable[str | None]) -> None:
    """Set the recorders-by-state gauge from every known recorder's last phase (every state
    is exported, 0 included, so a rule can compare with it)."""
    counts = Counter_(p for p in phases if p is not None)
    for state in RECORDER_STATES:
        RECORDERS.labels(state).set(counts.get(state, 0))


async def serve(port: int) -> web.AppRunner:
    """Serve GET /metrics on `port` (all interfaces: the Service reaches the pod's IP)."""

    async def view(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
