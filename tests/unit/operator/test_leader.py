"""The Lease election's pure rules: who may take the Lease, what a write puts in it, the timing
it refuses, and where the CLI puts the Lease (the protocol itself runs in
tests/integration/k8s/test_operator_ha.py against a real API server)."""

from __future__ import annotations

import pytest
from datarecorder_operator import cli
from datarecorder_operator.leader import ElectionConfig, lease_spec, may_take, record_of


def test_a_held_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration() -> None:
    record = ("a", "2026-01-01T00:00:00.000000Z", 0)
    assert not may_take(record, "b", unchanged_for=14.9, lease_seconds=15)
    assert may_take(record, "b", unchanged_for=15, lease_seconds=15)


def test_own_and_released_leases_are_taken_at_once() -> None:
    assert may_take(("a", "t", 3), "a", unchanged_for=0, lease_seconds=15)
    assert may_take(("", "t", 3), "b", unchanged_for=0, lease_seconds=15)


def test_renewal_keeps_acquire_time_and_transitions() -> None:
    mine = lease_spec(None, "a", 15, now="t0")
    assert mine == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "t0",
        "renewTime": "t0",
        "leaseTransitions": 0,
    }
    renewed = lease_spec(mine, "a", 15, now="t1")
    assert (renewed["acquireTime"], renewed["renewTime"], renewed["leaseTransitions"]) == (
        "t0",
        "t1",
        0,
    )
    taken = lease_spec(renewed, "b", 15, now="t2")
    assert (taken["holderIdentity"], taken["acquireTime"], taken["leaseTransitions"]) == (
        "b",
        "t2",
        1,
    )
    assert record_of({"spec": taken}) == ("b", "t2", 1)


@pytest.mark.parametrize(
    ("lease", "deadline", "retry"), [(15, 15, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)]
)
def test_timing_that_could_make_two_leaders_is_refused(
    lease: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
        ElectionConfig("ns", "me", lease_seconds=lease, renew_deadline_seconds=deadline,
                       retry_seconds=retry)  # fmt: skip


def test_cli_puts_the_lease_in_the_pods_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    monkeypatch.setenv("POD_NAME", "op-7d9f")
    args = cli.parser().parse_args(["run", "--leader-election", "-n", "apps"])
    config = cli.election_config(args)
    assert config.namespace == "ops"
    assert config.identity.startswith("op-7d9f_")
    assert (config.lease_seconds, config.renew_deadline_seconds, config.retry_seconds) == (
        15,
        10,
        2,
    )
    monkeypatch.delenv("POD_NAMESPACE")
    assert cli.election_config(args).namespace == "apps"  # the first watched namespace
