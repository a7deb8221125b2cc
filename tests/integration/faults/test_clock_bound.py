"""Fault scenario: a record stamped just past the 24 h bound, replayed later.

The first attempt (the database) and the replay (the lake, after a SIGKILL lost its buffer)
decode the same record seconds apart; both must decide as the record's Kafka timestamp says,
not as the recorder's clock says, or the two stores disagree for good.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.integration.faults.harness import Deployment, record_result

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

NS_PER_MS = 1_000_000
DAY_NS = 24 * 3600 * 1_000_000_000
# Past the bound by a little: the first attempt must see the record within this margin.
MARGIN_NS = 6_000_000_000


def tick(symbol: str, ts_ns: int) -> bytes:
    return json.dumps({"symbol": symbol, "price": 100.0, "volume": 1, "timestamp": ts_ns}).encode()


async def test_record_just_past_the_bound_is_decided_alike_on_replay(
    deployment: Deployment,
) -> None:
    dep = deployment
    tick_topic = dep.topics[0]
    # The database flushes at once; the lake keeps everything in memory until it is killed.
    rec = dep.recorder(S3_BATCH_TIMEOUT_SEC=600, S3_BATCH_SIZE=1_000_000)
    kafka_ms = time.time_ns() // NS_PER_MS
    bound_ns = kafka_ms * NS_PER_MS + DAY_NS
    past = bound_ns + MARGIN_NS  # invalid by its Kafka timestamp; by the clock until ~6 s later
    values = [
        (tick_topic, tick("PAST", past), kafka_ms),
        (tick_topic, tick("INSIDE", bound_ns - 1_000_000_000), kafka_ms),
        # Old Kafka timestamps: a backlog replayed an hour after it was appended. Inside the
        # bound by its own timestamp; by the clock it would be 59 minutes "inside" too.
        (tick_topic, tick("BACKLOG", bound_ns - 3_600_000_000_000 - 1), kafka_ms - 3_600_000),
        # Past its own bound by an hour yet within the clock's: a clock-based check keeps it.
        (tick_topic, tick("OLDPAST", bound_ns - 1), kafka_ms - 3_600_000),
    ]
    await dep.send_stamped(values)
    ends = await dep.end_offsets()
    deadline = time.monotonic() + 60
    while dep.behind(ends, await dep.db_progress()) > 0:
        assert time.monotonic() < deadline, dep.logs()
        await asyncio.sleep(0.2)
    first_seen_ns = time.time_ns()
    # The lake stored only its starting point at assignment (offset 0), nothing flushed.
    assert set((await dep.s3_progress() or {}).values()) <= {0}
    dep.kill(rec)
    # The replay happens once the clock has moved past the record's stamp minus 24 h: a
    # clock-based bound now accepts what the first attempt rejected.
    await dep.wait_for(
        "the clock past the stamp - 24 h", lambda: time.time_ns() + DAY_NS > past, 60
    )
    restarted = time.monotonic()
    dep.recorder()
    await dep.wait_drained(ends, limit_s=120, what="after the replay")
    recovery = time.monotonic() - restarted
    report = await dep.verify_exact()
    dead = next(s for s in report["stores"] if s["store"] == "dead_letters")
    # PAST and OLDPAST are dead letters whenever they are decided; INSIDE and BACKLOG are rows.
    assert dead["expected"] == 2 and dead["found"] == 2, (dead, report)
    record_result(
        "record past the 24 h bound replayed later",
        report,
        produced=len(values),
        first_attempt_margin_s=round((past - DAY_NS - first_seen_ns) / 1e9, 1),
        peak_rss_mib=round(dep.peak_rss_mib(), 1),
        recovery_s=round(recovery, 1),
    )
