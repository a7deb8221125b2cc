"""What the operator keeps between passes over a DataRecorder, and its operator-wide settings.

Owns `ObjectState` (per resource, in memory: lost on restart, which is safe), `OperatorConfig`
and `Events`, the shape of the callable that posts an Event.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from datarecorder_operator import (
    kafkalag,
)
from datarecorder_operator.lag import (
    Committed,
    LagReport,
)
from datarecorder_operator.policy import (
    RESTRICTED,
    Policy,
)
from datarecorder_operator.scaler import Stabilizer

# Posts one Event on the DataRecorder: (type, reason, message).
Events = Callable[[str, str, str], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide timing; tests shorten it, production keeps the defaults."""

    tick_seconds: float = 5.0
    resync_seconds: float = 30.0
    kafka_timeout_seconds: float = 20.0
    read_lag: bool = True  # also read lag for status when autoscaling is not in operator mode
    metrics_port: int = 0  # serve the operator's /metrics on this port (0: off)
    # Watch the recorders' Deployments (off: a GET per tick, as before; kept for the bench).
    watch_deployments: bool = True
    # What a DataRecorder may ask of its pods (`--policy`, the chart's `policy` value).
    policy: Policy = RESTRICTED


@dataclasses.dataclass
class ObjectState:
    """Per-resource memory between timer ticks (lost on restart, which is safe)."""

    last_resync: float = float("-inf")
    last_lag_poll: float = float("-inf")
    lag: LagReport | None = None
    lag_time: str | None = None
    lag_error: str | None = None
    stabilizer: Stabilizer | None = None
    last_scale_time: str | None = None
    foreign: tuple[str, ...] = ()
    lag_failures: int = 0  # lag reads in a row that failed (KEDA's fallback counts them)
    lag_reader: kafkalag.LagReader = dataclasses.field(default_factory=kafkalag.LagReader)
    # The Deployment as the watch last showed it (`handlers.deployment_seen`): a pass reads it
    # from here instead of a GET per tick. `deployment_watched` is False until the watch has
    # reported on it (absent included), and a pass then GETs it.
    deployment_watched: bool = False
    custom_metrics_served: bool | None = None  # mode hpa: asked on every apply pass
    committed: Committed | None = None  # the previous poll's committed offsets
    persistent: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    watched_deployment: dict[str, Any] | None = None
    # No old-name child (see `migration`) is left: later passes stop looking for them. After a
    # restart one pass looks again.
    legacy_retired: bool = False
    # Restricted policy: why the pods may not be rendered (Secrets not marked for this
    # DataRecorder), found on the last apply pass; the passes between keep reporting it.
    unmarked: str | None = None
    # What the last pass found: spec.state, or "reconcile_paused" / "invalid" (the operator's
    # gauge of recorders by state); None before the first pass.
    phase: str | None = None
    restart_noted: str | None = None  # the restart value an event was posted for


def now_iso() -> str:
    """The wall clock as the API's timestamps write it (status times, Events)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
