"""Fault scenario: 1,000-level order books at default settings under a 1 GiB memory limit.

MAX_BUFFER_SIZE alone (500,000 records) lets ~100 GiB of decoded books in; the byte limit
derived from a 1 GiB container limit must keep the recorder's peak RSS under 1 GiB while it
drains a backlog of them, and every record must still land exactly once.
"""

from __future__ import annotations

import time

import pytest

from recorder.core.backpressure import buffer_bytes_limit
from recorder.runtime.settings import Settings
from recorder.tools.produce import FeedSpec, orderbook_values
from tests.integration.faults.harness import BASE_ENV, MIB, Deployment, record_result

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

GIB = 1024 * MIB
BOOKS = 5000  # ~1.05 GB decoded: more than the limit if buffered by record count alone
LEVELS = 1000


@pytest.mark.parametrize(
    ("books", "max_buffer_bytes", "margin"),
    [
        # The derived limit must leave the pod at least 15 % of its memory to spare.
        pytest.param(BOOKS, None, 0.15, id="derived-from-1GiB"),
        # Half a GiB of buffers set by hand for a 1 GiB pod: the encoders' transients (COPY
        # stream, Parquet, copies of a flush) and the fetch being decoded must fit beside it.
        pytest.param(8000, 512 * MIB, 0.0, id="512MiB-buffers"),
    ],
)
async def test_thousand_level_books_stay_under_a_1_gib_limit(
    deployment: Deployment, books: int, max_buffer_bytes: int | None, margin: float
) -> None:
    dep = deployment
    book_topic = dep.topics[1]
    start = time.time_ns() - 3600 * 1_000_000_000
    values = orderbook_values(FeedSpec(seed=7, levels=LEVELS), start, 1_000_000)
    await dep.send_raw([(book_topic, next(values)[1]) for _ in range(books)])
    # Default settings (not the fault suite's small batches), and MAX_BUFFER_BYTES as the
    # recorder derives it from a 1 GiB cgroup memory.max (this machine's recorder runs in no
    # such cgroup, so the derived value is passed explicitly), or as an operator set it.
    defaults = {k: Settings.model_fields[k].default for k in BASE_ENV if k != "LOG_LEVEL"}
    limit = max_buffer_bytes or buffer_bytes_limit(0, GIB)
    rec = dep.recorder(MAX_BUFFER_BYTES=limit, **defaults)
    started = time.monotonic()
    await dep.wait_drained(limit_s=400, what="1,000-level books")
    drained = time.monotonic() - started
    report = await dep.verify_exact()
    peak = dep.peak_rss_mib()
    paused = dep.metric(rec, "datarecorder_buffer_limit_bytes")
    assert paused == limit
    record_result(
        f"1,000-level order books, 1 GiB limit (MAX_BUFFER_BYTES {limit // MIB} MiB)",
        report,
        produced=books,
        max_buffer_bytes_mib=limit // MIB,
        peak_rss_mib=round(peak, 1),
        recovery_s=None,
        drain_s=round(drained, 1),
    )
    bound = 1024 * (1 - margin)
    assert peak < bound, f"peak RSS {peak:.0f} MiB >= {bound:.0f} MiB\n{dep.logs()}"
