"""How many requests the operator's own client sends per DataRecorder in steady state.

`python bench/operator_api_calls.py [--seconds 60] [--recorders 1]`: the operator (production
timing: tick 5 s, resync 30 s) against the kmock emulator of tests/integration/operator, one or
more DataRecorders without autoscaling, Kafka unreachable (the lag poll fails fast, so its
Secret reads are not counted: plaintext Kafka has none). Counts
`datarecorder_operator_api_requests_total` by method over the window, after one resync period
of settling, and prints a table. kopf's own watch connections are not in the count.
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


async def main(seconds: float, recorders: int) -> None:
    port = free_port()
    config = OperatorConfig(metrics_port=port, kafka_timeout_seconds=2)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        async with running_operator(Path(tmp), mp, config=config) as cluster:
            for i in range(recorders):
                await cluster.create(recorder(f"rec{i}"))
            await asyncio.sleep(config.resync_seconds + config.tick_seconds)  # settle
            before = await counts(port)
            await asyncio.sleep(seconds)
            after = await counts(port)
    per_minute = {m: (after.get(m, 0) - before.get(m, 0)) * 60 / seconds / recorders for m in after}
    print(
        f"operator API requests per minute per DataRecorder ({recorders} recorders, {seconds:.0f} s)"
    )
    print("| method | requests/min |")
    print("| --- | --- |")
    for method, value in sorted(per_minute.items()):
        print(f"| {method} | {value:.1f} |")
    print(f"| all | {sum(per_minute.values()):.1f} |")


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--seconds", type=float, default=60)
    args.add_argument("--recorders", type=int, default=1)
    ns = args.parse_args()
    asyncio.run(main(ns.seconds, ns.recorders))
