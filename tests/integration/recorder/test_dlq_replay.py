"""`datarecorder dlq replay` on the real stack: dead letters of a too-strict rule are recorded
exactly once after the rule is relaxed, across a SIGKILL in mid-replay and a second replay.

A recorder with a small MAX_MESSAGE_BYTES dead-letters the larger ticks (`too_large`) beside
records that are broken for good (`malformed_json`). With the rule relaxed, a replay is killed
once its progress is part-way, a second one completes, a third one finds nothing to do. Both
stores must then hold every valid tick sent exactly once, every field as sent (the replayed
ones included: those without a `timestamp` field carry the original record's Kafka timestamp,
not the dead letter's), and the broken records must still be in the dead-letter topic only.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.faults.harness import LOGS, Deployment
from tests.support import as_sent
from tests.support.recorder_proc import RecorderProcess

pytestmark = pytest.mark.integration

TICKS = 3000
BROKEN = 40


class Replay(RecorderProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-m", "recorder.cli", "dlq", "replay", "--topic", self.env["DLQ"]]


def replay_once(env: dict[str, str]) -> tuple[int, str]:
    res = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "dlq", "replay", "--topic", env["DLQ"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return res.returncode, res.stdout + res.stderr[-3000:]


async def dlq_values(brokers: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        out: list[bytes] = []
        while await consumer.position(tp) < end:
            for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                out.append(m.value)
    finally:
        await consumer.stop()
    return out


async def test_replay_records_each_dead_letter_once_across_a_sigkill(
    one_partition: Deployment,
) -> None:
    dep = one_partition
    tick, book = dep.topics[0], dep.topics[1]
    dlq = f"{tick}.dlq"
    sent = as_sent.corpus((tick, book), 1, ticks=TICKS, books=0, seed=11)
    limit = sorted(len(r.value) for r in sent)[TICKS // 2]  # about half are "too large"
    strict = [r for r in sent if len(r.value) > limit]
    assert len(strict) > TICKS // 3
    rec = dep.recorder(MAX_MESSAGE_BYTES=limit, KAFKA_AUTO_OFFSET_RESET="earliest")
    await as_sent.send(dep.env["KAFKA_BROKERS"], sent)
    broken = [(tick, b'{"symbol": "X", "price": ' + str(i).encode()) for i in range(BROKEN)]
    await dep.send_raw(broken)
    await dep.wait_drained({(tick, 0): TICKS + BROKEN}, limit_s=180, what="strict recording")
    dep.terminate(rec)
    letters = await dlq_values(dep.env["KAFKA_BROKERS"], dlq)
    assert len(letters) == len(strict) + BROKEN, (len(letters), len(strict))

    # The rule relaxed; small batches so the replay's progress moves in many steps.
    env = dict(
        dep.env,
        DLQ=dlq,
        MAX_MESSAGE_BYTES="1048576",
        BATCH_SIZE="40",
        FETCH_MAX_RECORDS="40",
        S3_BATCH_SIZE="120",
    )
    first = Replay(env, LOGS / dep.name / "replay-killed.log").start(wait_ready=None)
    deadline = time.monotonic() + 120
    part_way = None
    while time.monotonic() < deadline and first.alive():
        progress = await dep.db_progress() or {}
        at = progress.get((dlq, 0))
        if at is not None and 0 < at < len(letters):
            part_way = at
            first.kill()  # SIGKILL: no flush, no commit, buffers lost
            break
        await asyncio.sleep(0.05)
    assert part_way is not None, f"the replay was not caught part-way\n{first.tail()}"

    code, out = replay_once(env)
    assert code == 0, out
    assert "replayed: every sink's progress reached" in out, out
    assert "still failing: malformed_json:" in out, out
    stored = await dep.progress()
    assert stored["timescaledb"][(dlq, 0)] == len(letters), stored  # type: ignore[index]

    code, again = replay_once(env)  # nothing left: records nothing, reads nothing
    assert code == 0 and "read this run: 0 dead letters" in again, again

    got = await as_sent.stored(dep.env)
    for name, micros in (("db.tick", True), ("lake.tick", False)):
        want = as_sent.expected(sent, tick, micros=micros)
        assert got[name] == want, (name, as_sent.differences(want, got[name]))
    # The broken records stay where they were, and only there.
    assert await dlq_values(dep.env["KAFKA_BROKERS"], dlq) == letters
