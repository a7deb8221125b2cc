"""Two operator processes with leader election on a Lease, on the real control plane.

Owns the HA checks: one leader writes while both run, a SIGKILLed leader is replaced within the
stated bound, and a clean stop hands the Lease over at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import create_tsdb_secret, data_recorder
from tests.integration.k8s.operator_proc import Operator

pytestmark = [pytest.mark.k8s, pytest.mark.integration]

LEASE_SECONDS, RENEW_DEADLINE, RETRY = 6, 4, 1
# After a SIGKILL the standby waits out the Lease (it cannot know the leader is gone), takes it
# on its next retry, then starts kopf, whose resume pass applies the changed spec. The last part
# is a few seconds here; 20 s leaves room for a shared 2-core machine.
TAKEOVER_BOUND = LEASE_SECONDS + RETRY + 20


def _election(identity: str) -> tuple[str, ...]:
    return (
        "--leader-election", "--identity", identity, "--lease-name", "ha-test",
        "--lease-duration", str(LEASE_SECONDS), "--renew-deadline", str(RENEW_DEADLINE),
        "--retry-period", str(RETRY),
    )  # fmt: skip


def _holder(k8s: K8s, ns: str) -> str | None:
    result = k8s.kubectl("get", "lease", "ha-test", "-n", ns, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    import json

    lease: dict[str, Any] = json.loads(result.stdout)
    holder: str = lease["spec"].get("holderIdentity") or ""
    return holder


def _replicas(k8s: K8s, ns: str, name: str) -> int | None:
    result = k8s.kubectl(
        "get",
        "deploy",
        f"{name}-recorder",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.replicas}",
        check=False,
    )
    return int(result.stdout) if result.returncode == 0 and result.stdout else None


@pytest.fixture
def namespace(k8s: K8s) -> Iterator[str]:
    name = f"ha-{uuid.uuid4().hex[:8]}"
    k8s.kubectl("create", "namespace", name)
    create_tsdb_secret(k8s, name)
    try:
        yield name
    finally:
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_a_killed_leader_is_replaced_within_the_bound(
    k8s: K8s, namespace: str, tmp_path: Path
) -> None:
    first = Operator(k8s, namespace, tmp_path / "a.log", extra_args=_election("a"))
    second: Operator | None = None
    try:
        first.wait_alive()
        wait_for(lambda: _holder(k8s, namespace) == "a", timeout=60, what="a holds the Lease")
        second = Operator(k8s, namespace, tmp_path / "b.log", extra_args=_election("b"))
        second.wait_alive()  # the standby's liveness answers while it waits
        k8s.apply(data_recorder("rec", replicas=1), namespace)
        wait_for(lambda: _replicas(k8s, namespace, "rec") == 1, timeout=90, what="rec applied")
        # Both run for a while longer: only the leader works, the Lease never changes hands.
        for _ in range(3 * LEASE_SECONDS):
            assert _holder(k8s, namespace) == "a"
            time.sleep(0.5)
        assert "applied Deployment rec-recorder" in first.log()
        standby = second.log()
        assert "waiting for leadership: Lease held by a" in standby
        assert "applied" not in standby and "kopf" not in standby.lower(), standby[-3000:]

        first.kill()
        killed = time.monotonic()
        k8s.kubectl(
            "patch", "datarecorder", "rec", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"replicas": 2}}',
        )  # fmt: skip
        wait_for(
            lambda: _replicas(k8s, namespace, "rec") == 2,
            timeout=TAKEOVER_BOUND + 30,
            what="the standby applies the change",
        )
        took = time.monotonic() - killed
        print(f"takeover after SIGKILL: {took:.1f} s (bound {TAKEOVER_BOUND} s)")
        assert took <= TAKEOVER_BOUND, second.log()[-4000:]
        assert _holder(k8s, namespace) == "b"
        assert "applied Deployment rec-recorder" in second.log()

        # A clean stop gives the Lease up: a standby need not wait it out.
        second.stop()
        assert _holder(k8s, namespace) == ""
        second.assert_no_traceback_while_running()
    finally:
        first.stop()
        if second is not None:
            second.stop()
