"""The services a benchmark run talks to: external ones from the environment, or scripts/stack.

Owns acquiring the stack (a lease, like the pytest fixtures, so the last user stops a stack it
did not find running), releasing it, and stopping/starting one service for the outage scenario.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from recorder.devstack.client import (
    REPO,
    StackUnavailable,
    external_env,
    other_leases,
    release,
    run_stack,
    up_with_lease,
)

__all__ = ["REPO", "Stack", "StackUnavailable", "acquire"]


@dataclass
class Stack:
    env: dict[str, str]
    managed: bool
    state_dir: Path | None = None
    lease: str | None = None

    def others_using(self) -> list[int]:
        """Live leases of other sessions (pytest runs) on this managed stack."""
        return other_leases(self.lease) if self.state_dir is not None else []

    def can_stop_services(self) -> bool:
        return self.managed and not self.others_using()

    def stop(self, service: str) -> None:
        res = run_stack("stop", service)
        if res.returncode != 0:
            raise RuntimeError(f"scripts/stack stop {service} failed:\n{res.stdout}{res.stderr}")

    def start(self, service: str) -> None:
        res = run_stack("start", service, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"scripts/stack start {service} failed:\n{res.stdout}{res.stderr}")

    def release(self) -> None:
        if self.lease is not None:
            release(self.lease)
            self.lease = None


def acquire() -> Stack:
    """External services when their variables are set; else `scripts/stack up` with a lease."""
    env = external_env()
    if env is not None:
        return Stack(env=env, managed=False)
    lease = str(os.getpid())
    env, state_dir = up_with_lease(lease)
    return Stack(env=env, managed=True, state_dir=state_dir, lease=lease)
