"""The reset-to-time annotation's steps (pure) and its Job, on generated pass sequences.

Owns `reset.next_step` through a whole reset (stop, Job, outcome, restore), the refusals, and
the Job's pod (the recorder's, running reset-progress per topic).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from datarecorder_operator import naming, reset, status, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.spec import RecorderSpec

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"], "topics": ["market.tick", "books:orderbook"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}
T = "2026-12-01T00:00:00Z"


def spec(**fields: Any) -> RecorderSpec:
    return parse_spec("rec", "md", {**BASE, **fields})


def step(
    asked: str | None,
    current: dict[str, Any] | None,
    last: dict[str, Any] | None = None,
    *,
    pods: int = 0,
    job: tuple[reset.JobState, str] | None = None,
) -> reset.ResetStep:
    return reset.next_step(asked, current, last, recorder="rec", pods=pods, job=job, now="t1")


def test_a_reset_stops_waits_for_the_pods_runs_the_job_and_restores() -> None:
    first = step(T, None)
    assert first.hold_stopped and not first.create_job and first.event is not None
    current = first.in_progress
    assert current is not None and current["phase"] == "Stopping" and current["time"] == T
    assert current["job"].startswith("rec-reset-")
    # Pods still there (terminating ones count): keep waiting, still stopped, no Job.
    waiting = step(T, current, pods=1)
    assert waiting.hold_stopped and not waiting.create_job and waiting.event is None
    # Gone: the Job.
    running = step(T, current, pods=0)
    assert running.hold_stopped and running.create_job
    assert running.in_progress is not None and running.in_progress["phase"] == "Running"
    # The Job runs: nothing new.
    during = step(T, running.in_progress, job=("running", ""))
    assert during.hold_stopped and not during.create_job and during.event is None
    # Done: the outcome recorded, the reset cleared, the annotation removed, state restored.
    done = step(T, running.in_progress, job=("succeeded", ""))
    assert not done.hold_stopped and done.in_progress is None
    assert done.finished is not None and done.finished["outcome"] == "Succeeded"
    assert (done.finished["time"], done.finished["job"]) == (T, current["job"])
    assert done.remove_annotation == T and done.event is not None
    assert done.event[:2] == ("Normal", "ResetSucceeded")
    # A later pass that still sees the annotation (its removal was lost) does not run again.
    again = step(T, None, done.finished)
    assert again == reset.ResetStep(remove_annotation=T)
    # And a pass that still sees the old status.reset beside the new lastReset only clears it.
    stale = step(None, running.in_progress, done.finished, job=("succeeded", ""))
    assert stale.finished is None and stale.in_progress is None and stale.event is None


def test_a_failed_job_is_recorded_as_failed_and_the_state_restored() -> None:
    current = step(T, None).in_progress
    failed = step(T, current, job=("failed", "BackoffLimitExceeded"))
    assert not failed.hold_stopped and failed.finished is not None
    assert failed.finished["outcome"] == "Failed"
    assert "BackoffLimitExceeded" in failed.finished["message"]
    assert failed.event is not None and failed.event[:2] == ("Warning", "ResetFailed")


def test_a_new_value_given_meanwhile_is_kept_for_the_next_reset() -> None:
    current = step(T, None).in_progress
    later = "2026-12-02T00:00:00Z"
    assert step(later, current, pods=2).hold_stopped  # the running reset goes on
    done = step(later, current, job=("succeeded", ""))
    assert done.remove_annotation is None  # the next pass starts the new one
    following = step(later, None, done.finished)
    assert following.in_progress is not None and following.in_progress["time"] == later


def test_not_a_time_is_refused_without_stopping_anything() -> None:
    for value in ("yesterday", "2026-12-01", "2026-12-01T00:00:00"):
        refused = step(value, None)
        assert not refused.hold_stopped and refused.in_progress is None
        assert refused.finished is not None and refused.finished["outcome"] == "Invalid"
        assert "RFC 3339" in refused.finished["message"]
        assert refused.remove_annotation == value
    assert step(None, None) == reset.ResetStep()


def test_job_names_differ_per_reset_and_fit_a_label() -> None:
    names = {reset.job_name("r" * 54, T, started) for started in ("a", "b")}
    assert len(names) == 2 and all(len(n) <= 63 for n in names)


def test_job_state_from_conditions() -> None:
    assert reset.job_state(None) is None
    assert reset.job_state({"status": {}}) == ("running", "")
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert reset.job_state(complete) == ("succeeded", "")
    failed = {
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
        }
    }
    assert reset.job_state(failed) == ("failed", "DeadlineExceeded")


def test_the_job_is_the_recorders_pod_running_reset_progress_per_topic() -> None:
    parsed = spec(serviceAccount={"annotations": {"eks.amazonaws.com/role-arn": "arn"}})
    job = reset.render_reset_job(parsed, T, "rec-reset-1")
    pod = job["spec"]["template"]["spec"]
    recorder = workload.render_deployment(parsed, 1)["spec"]["template"]["spec"]
    steps = pod["initContainers"] + pod["containers"]
    assert [c["command"] for c in steps] == [
        reset.reset_args("market.tick", T),
        reset.reset_args("books", T),  # `name:kind`: the topic's name
    ]
    assert reset.reset_args("x", T)[1:] == [
        "reset-progress",
        "--topic",
        "x",
        "--to-time",
        T,
        "--apply",
    ]
    for container in steps:
        for key in ("image", "env", "envFrom", "securityContext", "volumeMounts"):
            assert container[key] == recorder["containers"][0][key], key
        assert not {"ports", "livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    for key in ("serviceAccountName", "securityContext", "volumes"):
        assert pod[key] == recorder[key], key
    assert pod["restartPolicy"] == "Never"
    labels = job["spec"]["template"]["metadata"]["labels"]
    # Never selected as a recorder (Service, PDB, the Deployment, the pods the reset waits for).
    assert labels["app.kubernetes.io/component"] == "reset"
    assert labels != naming.selector_labels(parsed)
    assert job["spec"]["backoffLimit"] == reset.JOB_BACKOFF_LIMIT


def test_a_held_spec_renders_stopped_and_the_status_says_resetting() -> None:
    first = step(T, None)
    assert reset.reset_spec(spec(), first).stopped
    assert not reset.reset_spec(spec(), reset.ResetStep()).stopped
    obs = status.Observation(generation=1, deployment=None, state="stopped")
    resetting = dataclasses.replace(
        obs,
        deployment={"spec": {"replicas": 0}, "status": {}},
        reset_known=True,
        reset=first.in_progress,
    )
    ready = {c["type"]: c for c in status.conditions_for(resetting)}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ResettingProgress")
    written = status.compute_status(resetting, None, now="t")
    assert written["reset"] == first.in_progress
    cleared = dataclasses.replace(resetting, reset=None, last_reset={"outcome": "Succeeded"})
    written = status.compute_status(cleared, {"reset": first.in_progress}, now="t")
    assert written["reset"] is None and written["lastReset"] == {"outcome": "Succeeded"}
    # A pass that does not know (reconciliation paused) keeps both.
    kept = status.compute_status(
        status.Observation(generation=1, paused=True),
        {"reset": first.in_progress, "lastReset": {"outcome": "Failed"}},
        now="t",
    )
    assert kept["reset"] == first.in_progress and kept["lastReset"] == {"outcome": "Failed"}
