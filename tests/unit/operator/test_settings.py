"""The operator's kopf settings: log lines are never posted as Events.

Drives kopf's own posting filter under the settings the operator's startup handler applies;
the operator's own Events are checked on a real cluster in tests/integration/k8s.
"""

from __future__ import annotations

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


def test_kopf_posts_no_events_of_its_own(settings: kopf.OperatorSettings) -> None:
    # The operator posts its Events itself (handlers.event_poster): the resync loop runs
    # outside kopf's per-object tasks, where kopf.info/kopf.warn would have no queue.
    assert settings.posting.enabled is False


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
