"""Log events declared once (recorder.runtime.telemetry): every log call of the pod names a declared
event at its declared level with declared fields, and an event's metrics move when it is emitted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from recorder.runtime import metrics, telemetry

PACKAGE = Path(telemetry.__file__).resolve().parents[1]  # recorder/
LEVELS = {"debug", "info", "warning", "error", "exception"}


def _pod_modules() -> list[Path]:
    """The pod's modules (tools/ — demo, produce, verify — are not part of it)."""
    return sorted(p for p in PACKAGE.rglob("*.py") if "tools" not in p.relative_to(PACKAGE).parts)


def _names(node: ast.expr) -> list[str]:
    """Event names a log call's first argument may take: a literal, or `"a" if c else "b"`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _names(node.body) + _names(node.orelse)
    return []


def _declared(node: ast.expr, where: str) -> list[telemetry.Event]:
    """Events an emit's first argument may be: `telemetry.X`, or `telemetry.X if c else ...`."""
    if isinstance(node, ast.IfExp):
        return _declared(node.body, where) + _declared(node.orelse, where)
    declared = getattr(telemetry, node.attr, None) if isinstance(node, ast.Attribute) else None
    assert isinstance(declared, telemetry.Event), f"{where}: emits an undeclared event"
    return [declared]


def _calls() -> Iterator[tuple[str, str, str, set[str]]]:
    """(where, event name, level, keyword names) of every log call and every emit."""
    for path in _pod_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            keywords = {k.arg for k in node.keywords if k.arg is not None}
            func = node.func
            if func.attr == "emit" and node.args:
                for event in _declared(node.args[0], where):
                    yield where, event.name, event.level, keywords - {"exc_info"}
            elif (
                func.attr in LEVELS
                and isinstance(func.value, ast.Name)
                and func.value.id == "log"
                and node.args
            ):
                level = "error" if func.attr == "exception" else func.attr
                for name in _names(node.args[0]):
                    yield where, name, level, keywords - {"exc_info"}


CALLS = list(_calls())


def test_the_scan_finds_the_call_sites() -> None:
    found = {name for _, name, _, _ in CALLS}
    assert {"partitions_assigned", "consumer_paused", "flush", "store_retry"} <= found


@pytest.mark.parametrize(("where", "name", "level", "keywords"), CALLS, ids=[c[0] for c in CALLS])
def test_every_log_call_is_a_declared_event(
    where: str, name: str, level: str, keywords: set[str]
) -> None:
    event = telemetry.EVENTS.get(name)
    assert event is not None, (
        f"{where}: log event {name!r} is not declared in recorder/runtime/telemetry.py"
    )
    assert level == event.level, f"{where}: {name} logged at {level}, declared {event.level}"
    undeclared = keywords - set(event.fields)
    assert not undeclared, f"{where}: {name} logs undeclared fields {sorted(undeclared)}"


def test_every_declared_event_is_logged_somewhere() -> None:
    logged = {name for _, name, _, _ in CALLS}
    assert set(telemetry.EVENTS) - logged == set()


@pytest.mark.parametrize(
    "module",
    [
        "pipeline.py",
        "coordinator/intake.py",
        "coordinator/rebalance.py",
        "coordinator/health.py",
        "kafka/source.py",
        "kafka/dlq.py",
        "cli.py",
        "runtime/supervise.py",
    ],
)
def test_the_coordinator_and_kafka_modules_log_only_through_events(module: str) -> None:
    assert "structlog" not in (PACKAGE / module).read_text(), f"{module} logs around telemetry"


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_emitting_applies_the_declared_metric_updates() -> None:
    labels = {"topic": "telemetry.test", "partition": "7"}
    telemetry.emit(
        telemetry.PARTITION_HALTED,
        topic="telemetry.test",
        partition=7,
        progress=9,
        log_end=3,
        reason="x",
    )
    assert _value("datarecorder_partition_halted", labels) == 1
    telemetry.emit(telemetry.PARTITION_RELEASED, topic="telemetry.test", partition=7)
    assert _value("datarecorder_partition_halted", labels) == 0

    before = _value("datarecorder_dead_letter_failures_total", {"topic": "telemetry.a"})
    telemetry.emit(
        telemetry.DEAD_LETTERS_REFUSED,
        error="refused",
        letters=3,
        topics=["telemetry.a", "telemetry.a", "telemetry.b"],  # one per refused partition
    )
    after = _value("datarecorder_dead_letter_failures_total", {"topic": "telemetry.a"})
    assert after - before == 2

    errors = {"sink": "pipeline", "operation": "assign"}
    before = _value("datarecorder_store_errors_total", errors)
    telemetry.emit(telemetry.ASSIGNMENT_FAILED, partitions=2, error="OSError: x")
    assert _value("datarecorder_store_errors_total", errors) - before == 1

    telemetry.emit(telemetry.CONSUMER_PAUSED, consumers_paused=1, buffered={}, buffered_bytes={})
    assert _value("datarecorder_consumer_paused") == 1
    telemetry.emit(telemetry.CONSUMER_RESUMED, consumers_paused=0, buffered={}, buffered_bytes={})
    assert _value("datarecorder_consumer_paused") == 0


def test_events_are_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        telemetry._event("flush", "info", "again")


def test_all_metric_names_come_from_the_registry() -> None:
    declared = {
        value._name for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)
    }
    bases = {n.removesuffix("_total") for n in metrics.ALL_METRIC_NAMES}
    bases = {n.rsplit("_", 1)[0] if n.endswith(("_bucket", "_sum", "_count")) else n for n in bases}
    assert bases == declared
    assert "datarecorder_records_consumed_total" in metrics.ALL_METRIC_NAMES
    assert "datarecorder_flush_duration_seconds_bucket" in metrics.ALL_METRIC_NAMES
    assert not any(n.endswith("_created") for n in metrics.ALL_METRIC_NAMES)
