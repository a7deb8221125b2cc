"""The operator follows its Deployments by watch, not by a GET per tick (on the kmock emulator,
whose watch streams are kopf's real ones; the request counts come from the operator's own
`datarecorder_operator_api_requests_total`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from datarecorder_operator.handlers import OperatorConfig

from tests.integration.operator.emulator import running_operator
from tests.integration.operator.test_operator_emulator import NS, recorder
from tests.support.recorder_proc import free_port

pytestmark = pytest.mark.integration


async def _gets(port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    found = re.search(
        r'^datarecorder_operator_api_requests_total\{method="GET"\} (\S+)$', text, re.M
    )
    return float(found[1]) if found else 0.0


@pytest.mark.parametrize("watch", [True, False])
async def test_status_follows_the_deployment_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watch: bool
) -> None:
    port = free_port()
    # Ticks every 0.2 s; no re-apply during the test (resync 600 s) and no lag reads, so the
    # only GET a tick could make is the Deployment's.
    config = OperatorConfig(
        tick_seconds=0.2, resync_seconds=600, read_lag=False, metrics_port=port,
        watch_deployments=watch,
    )  # fmt: skip
    async with running_operator(tmp_path, monkeypatch, config=config) as cluster:
        await cluster.create(recorder())

        async def status_with(ready: int) -> dict[str, Any] | None:
            dr = await cluster.get("DataRecorder", NS, "rec")
            status = (dr or {}).get("status") or {}
            return dr if status.get("readyReplicas") == ready else None

        await cluster.wait_for(
            lambda: cluster.get("Deployment", NS, "rec-recorder"), what="Deployment"
        )
        await cluster.wait_for(lambda: status_with(0), what="a first status")
        before = await _gets(port)
        # The Deployment controller's part: its pod became ready.
        ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}
        await cluster.patch("Deployment", NS, "rec-recorder", {"status": ready}, sub="status")
        await cluster.wait_for(lambda: status_with(1), what="readyReplicas 1 in the status")
        gets = await _gets(port) - before
    if watch:
        assert gets == 0, f"{gets} GETs while the watch showed the Deployment"
    else:
        assert gets >= 1  # the poll it replaces: a GET of the Deployment per tick
