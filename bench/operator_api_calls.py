"""How many requests the operator's own client sends per DataRecorder in steady state.

`python bench/operator_api_calls.py [--seconds 60] [--recorders 1]`: the operator (production
timing: tick 5 s, resync 30 s) against the kmock emulator of tests/integration/operator, one or
more DataRecorders without autoscaling, Kafka unreachable (the lag poll fails fast, so its
Secret reads are not counted: plaintext Kafka has none). Counts
`datarecorder_operator_api_requests_total` by method over the window, after one resync period
of settling, twice: with the Deployment watch (the default) and without it (a GET of the
Deployment per tick, as before the watch), and prints both side by side. kopf's own watch
connections (one per watched kind, not per resource) are not in the count.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from datarecorder_operator.handlers import OperatorConfig  # noqa: E402

from recorder.devstack.recorder_proc import free_port  # noqa: E402
from tests.integration.operator.emulator import running_operator  # noqa: E402
from tests.integration.operator.test_operator_emulator import recorder  # noqa: E402


async def counts(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    pattern = r'^datarecorder_operator_api_requests_total\{method="(\w+)"\} ([0-9.e+]+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


async def measure(seconds: float, recorders: int, *, watch: bool) -> dict[str, float]:
    port = free_port()
    config = OperatorConfig(metrics_port=port, kafka_timeout_seconds=2, watch_deployments=watch)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        async with running_operator(Path(tmp), mp, config=config) as cluster:
            for i in range(recorders):
                await cluster.create(recorder(f"rec{i}"))
            await asyncio.sleep(config.resync_seconds + config.tick_seconds)  # settle
            before = await counts(port)
            await asyncio.sleep(seconds)
            after = await counts(port)
    return {m: (after.get(m, 0) - before.get(m, 0)) * 60 / seconds / recorders for m in after}


async def main(seconds: float, recorders: int) -> None:
    polled = await measure(seconds, recorders, watch=False)
    watched = await measure(seconds, recorders, watch=True)
    print(
        f"operator API requests per minute per DataRecorder ({recorders} recorders, {seconds:.0f} s)"
    )
    print("| method | GET per tick | Deployment watch | watch / GET per tick |")
    print("| --- | --- | --- | --- |")
    polled["all"], watched["all"] = sum(polled.values()), sum(watched.values())
    for method in sorted(set(polled) | set(watched), key=lambda m: (m == "all", m)):
        a, b = polled.get(method, 0.0), watched.get(method, 0.0)
        ratio = f"{b / a:.2f}" if a else "-"
        print(f"| {method} | {a:.1f} | {b:.1f} | {ratio} |")


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--seconds", type=float, default=60)
    args.add_argument("--recorders", type=int, default=1)
    ns = args.parse_args()
    asyncio.run(main(ns.seconds, ns.recorders))
