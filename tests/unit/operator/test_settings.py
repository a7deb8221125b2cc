"""The operator's kopf settings: explicit Events are posted, log lines are not.

Drives kopf's own posting functions (the queue its poster task drains) under the settings the
operator's startup handler applies; a real cluster check is in tests/integration/k8s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import kopf
import pytest
from datarecorder_operator.handlers import tune_settings
from kopf._core.actions.loggers import ObjectLogger
from kopf._core.engines import posting

BODY = kopf.Body(
    {
        "apiVersion": "datarecorder.dev/v1alpha1",
        "kind": "DataRecorder",
        "metadata": {"name": "r", "namespace": "ns", "uid": "uid-1"},
    }
)


@pytest.fixture
def settings() -> Iterator[kopf.OperatorSettings]:
    tuned = kopf.OperatorSettings()
    tune_settings(tuned)
    token = posting.settings_var.set(tuned)
    yield tuned
    posting.settings_var.reset(token)


async def test_the_scaled_event_is_posted(settings: kopf.OperatorSettings) -> None:
    queue: asyncio.Queue[posting.K8sEvent] = asyncio.Queue()
    queue_token = posting.event_queue_var.set(queue)
    loop_token = posting.event_queue_loop_var.set(asyncio.get_running_loop())
    try:
        kopf.info(BODY, reason="Scaled", message="lag: 1 -> 3 replicas")
        kopf.warn(BODY, reason="Degraded", message="bad spec")
    finally:
        posting.event_queue_loop_var.reset(loop_token)
        posting.event_queue_var.reset(queue_token)
    posted = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [(e.type, e.reason, e.ref["uid"]) for e in posted] == [
        ("Normal", "Scaled", "uid-1"),
        ("Warning", "Degraded", "uid-1"),
    ]


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, logging.ERROR])
def test_log_lines_are_not_posted_as_events(settings: kopf.OperatorSettings, level: int) -> None:
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    adapter = ObjectLogger(body=BODY, settings=settings)
    capture, old_level = Capture(), adapter.logger.level
    adapter.logger.addHandler(capture)
    adapter.logger.setLevel(logging.DEBUG)
    try:
        adapter.log(level, "patched Deployment r (spec change or drift)")
    finally:
        adapter.logger.setLevel(old_level)
        adapter.logger.removeHandler(capture)
    assert len(records) == 1
    assert not posting.K8sPoster().filter(records[0])
