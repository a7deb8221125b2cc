"""The reset-to-time verb (Strimzi's `alterOffsets`): what a pass does next, and the Job.

Owns the annotation, the steps (stop the recorders, run `datarecorder reset-progress --to-time
T --apply` per topic in a Job, record the outcome, restore the state), `status.reset` /
`status.lastReset` and the Job's manifest. Pure: no I/O.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from datarecorder_operator import naming, workload
from datarecorder_operator.parsing_kafka import check_time
from datarecorder_operator.spec import RecorderSpec, SpecError

# Set on a DataRecorder to an RFC 3339 time: the operator stops its recorders, moves every
# topic's progress to the first record stamped at or after that time, and runs them again.
RESET_ANNOTATION = "datarecorder.dev/reset-to-time"
# A Job that cannot finish (brokers or stores that never answer) ends as Failed, not never.
JOB_DEADLINE_SECONDS = 900
# The Job (and its pods' logs) stays a day for `kubectl logs job/...`; then it is collected.
JOB_TTL_SECONDS = 86400
# A retry of the whole command is safe: every move is compare-and-set, and a move already done
# is a move to where the progress already is. Two retries cover a member still leaving the group.
JOB_BACKOFF_LIMIT = 2
JOB_COMPONENT = "reset"

JobState = Literal["running", "succeeded", "failed"]
Outcome = Literal["Succeeded", "Failed", "Invalid"]


@dataclasses.dataclass(frozen=True)
class ResetStep:
    """What one pass does about the reset annotation."""

    # The recorders stay stopped for the reset (rendered as spec.state stopped).
    hold_stopped: bool = False
    # status.reset to write: the reset in progress; None when none is (or it just finished).
    in_progress: dict[str, Any] | None = None
    create_job: bool = False
    # status.lastReset to write when a reset finished (or was refused) in this pass.
    finished: dict[str, Any] | None = None
    # The annotation's value to remove (only if it still has that value).
    remove_annotation: str | None = None
    # A Normal or Warning event: (type, reason, message).
    event: tuple[str, str, str] | None = None


def job_name(recorder: str, time: str, started: str) -> str:
    """`<name>-reset-<hash>`: a new name per reset (a finished Job of an earlier reset, kept for
    its logs, is never taken for this one), at most 61 characters (a Job name is a label)."""
    digest = hashlib.sha256(f"{time}\n{started}".encode()).hexdigest()[:8]
    return naming.child_name(recorder, "Job", reset=digest)


def valid_time(value: str) -> bool:
    """START_FROM's form, on the calendar."""
    try:
        check_time(RESET_ANNOTATION, value.strip())
    except SpecError:
        return False
    return True


def job_state(job: Mapping[str, Any] | None) -> tuple[JobState, str] | None:
    """A Job's state from its conditions (None: no such Job) and the reason it gives."""
    if job is None:
        return None
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "succeeded", str(cond.get("message") or "")
        if cond.get("type") == "Failed":
            return "failed", str(cond.get("message") or cond.get("reason") or "failed")
    return "running", ""


def next_step(
    asked: str | None,
    current: Mapping[str, Any] | None,
    last: Mapping[str, Any] | None,
    *,
    recorder: str,
    pods: int,
    job: tuple[JobState, str] | None,
    now: str,
) -> ResetStep:
    """The pass's step, from the annotation's value (`asked`), `status.reset` (`current`),
    `status.lastReset` (`last`), the recorder pods still there (terminating ones included) and
    the reset Job's state (None: not created yet).

    A reset in progress is driven to its end whatever the annotation says meanwhile; the
    annotation is removed at the end only if it still asks for that reset, so a new value
    given meanwhile starts the next reset.
    """
    if current is not None:
        time, name = str(current["time"]), str(current["job"])
        if last is not None and last.get("job") == name:
            # Finished by an earlier pass whose view of the status was older than its write.
            return ResetStep(remove_annotation=time if asked == time else None)
        if job is None:
            if pods:
                progress = {**current, "phase": "Stopping"}
                return ResetStep(hold_stopped=True, in_progress=progress)
            message = f"recorder pods gone; Job {name} moves every topic's progress to {time}"
            return ResetStep(
                hold_stopped=True,
                in_progress={**current, "phase": "Running"},
                create_job=True,
                event=("Normal", "ResetRunning", message),
            )
        state, detail = job
        if state == "running":
            return ResetStep(hold_stopped=True, in_progress={**current, "phase": "Running"})
        outcome: Outcome = "Succeeded" if state == "succeeded" else "Failed"
        message = (
            f"progress of every topic moved to {time}"
            if outcome == "Succeeded"
            else f"Job {name} failed ({detail}); `kubectl logs job/{name}` says why, nothing "
            "was moved where it refused"
        )
        done = {"time": time, "outcome": outcome, "finishedAt": now, "job": name}
        done["message"] = message
        kind = "Normal" if outcome == "Succeeded" else "Warning"
        return ResetStep(
            finished=done,
            remove_annotation=time if asked == time else None,
            event=(kind, f"Reset{outcome}", message),
        )
    if asked is None:
        return ResetStep()
    if last is not None and last.get("time") == asked and last.get("outcome") != "Invalid":
        # Done already; only the annotation's removal was lost (a failed patch, a restart).
        return ResetStep(remove_annotation=asked)
    if not valid_time(asked):
        message = (
            f"{RESET_ANNOTATION} {asked!r} is not an RFC 3339 date-time with a zone "
            "(e.g. 2026-12-01T00:00:00Z); nothing was done"
        )
        done = {"time": asked, "outcome": "Invalid", "finishedAt": now, "message": message}
        return ResetStep(
            finished=done, remove_annotation=asked, event=("Warning", "ResetInvalid", message)
        )
    progress = {"time": asked, "phase": "Stopping", "startedAt": now}
    progress["job"] = job_name(recorder, asked, now)
    return ResetStep(
        hold_stopped=True,
        in_progress=progress,
        event=("Normal", "ResetStarted", f"stopping the recorders to move progress to {asked}"),
    )


def reset_spec(spec: RecorderSpec, step: ResetStep) -> RecorderSpec:
    """The spec the children are rendered from: stopped while a reset holds them."""
    return dataclasses.replace(spec, state="stopped") if step.hold_stopped else spec


def reset_args(topic: str, time: str) -> list[str]:
    """The recorder's command for one topic (`datarecorder` is the image's entry point)."""
    return ["datarecorder", "reset-progress", "--topic", topic, "--to-time", time, "--apply"]


def render_reset_job(spec: RecorderSpec, time: str, name: str) -> dict[str, Any]:
    """The Job: the recorder's pod (image, environment, Secrets, ServiceAccount, security
    context, volumes) running `reset-progress --to-time` once per topic, one after the other
    (init containers, the last topic in the main container), never as a recorder (no probes,
    no ports, not selected by the recorders' Service, PDB or Deployment)."""
    pod = copy.deepcopy(workload.render_deployment(spec, 0)["spec"]["template"]["spec"])
    recorder = pod.pop("containers")[0]
    for key in ("ports", "livenessProbe", "readinessProbe", "startupProbe"):
        recorder.pop(key, None)
    steps = []
    for index, topic in enumerate(spec.kafka.topic_names):
        container = copy.deepcopy(recorder)
        container["name"] = f"reset-{index}"
        container["command"] = reset_args(topic, time)
        steps.append(container)
    pod["initContainers"], pod["containers"] = steps[:-1], steps[-1:]
    pod["restartPolicy"] = "Never"
    labels = {**naming.common_labels(spec), "app.kubernetes.io/component": JOB_COMPONENT}
    meta = {"name": name, "namespace": spec.namespace, "labels": labels}
    meta["annotations"] = {RESET_ANNOTATION: time}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "activeDeadlineSeconds": JOB_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
