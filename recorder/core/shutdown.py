"""The shutdown decisions (pure): how SHUTDOWN_TIMEOUT_SEC is shared between flushing and the
last steps, and the exit code that says how a run ended.

Owns the exit codes of `datarecorder run` (README's shutdown section lists them) and the
budget; the I/O of the shutdown lives in recorder.pipeline (the sequence) and recorder.cli (the
signals and the hard stop at the deadline).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# The last steps (commit to Kafka, leave the group, close the stores) keep this share of the
# deadline, within these bounds, and never more than half of it: they take milliseconds on a
# healthy stack, and a store that does not answer would otherwise take all of it.
LEAVE_SHARE = 0.2
LEAVE_MIN_SEC = 1.0
LEAVE_MAX_SEC = 10.0


class ExitCode(IntEnum):
    """How `datarecorder run` ended."""

    OK = 0  # stopped by a signal after flushing every buffer (or with nothing buffered)
    FAILED = 1  # a long-running task died or the consumer failed (recorder_failed in the log)
    CONFIG = 2  # the settings were refused
    CUT = 3  # the deadline cut the shutdown: buffered records left for the next owner to replay
    NOT_STARTED = 4  # a signal came before start-up completed (a store or Kafka not reached)
    FORCED = 130  # a second signal: exit at once


@dataclass(frozen=True, slots=True)
class Budget:
    """Seconds after the stop: flushing may use the first `flush`, the last steps `leave`."""

    flush: float
    leave: float


def budget(deadline: float) -> Budget:
    """Share `deadline` (SHUTDOWN_TIMEOUT_SEC) between flushing and the last steps."""
    if deadline <= 0:
        raise ValueError(f"the shutdown deadline must be positive, not {deadline}")
    leave = min(max(deadline * LEAVE_SHARE, LEAVE_MIN_SEC), LEAVE_MAX_SEC, deadline / 2)
    return Budget(flush=deadline - leave, leave=leave)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a stopped recorder can say about its run."""

    started: bool  # start-up completed: the stores reached, the group joined
    failed: bool = False  # a long-running task died, or the consumer failed
    flushed: bool | None = None  # every buffer flushed; None while (or if never) known
    cut: tuple[str, ...] = ()  # the last steps the deadline cut (commit, leave, close)


def exit_code(outcome: Outcome) -> ExitCode:
    """A failure wins (it is why the run ended); then a start-up that never completed; then a
    shutdown the deadline cut, whether in its flush or in a last step; else OK."""
    if outcome.failed:
        return ExitCode.FAILED
    if not outcome.started:
        return ExitCode.NOT_STARTED
    if outcome.flushed is not True or outcome.cut:
        return ExitCode.CUT
    return ExitCode.OK
