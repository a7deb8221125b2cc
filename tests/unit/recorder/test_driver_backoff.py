"""The one backoff: doubling from the first wait, capped, jitter within its bound."""

from __future__ import annotations

import pytest

from recorder.core.backoff import Backoff
from recorder.core.backpressure import block


def test_doubles_from_the_first_wait_up_to_the_cap() -> None:
    b = Backoff(1.0, 10.0)
    assert [b.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.delay(0) == 1.0  # no failure counted yet waits as the first
    assert b.delay(10_000) == 10.0  # no overflow after a long outage


def test_jitter_adds_at_most_its_bound_and_the_cap_still_holds() -> None:
    b = Backoff(0.1, 10.0, jitter=0.1)
    assert b.delay(1, draw=0.0) == pytest.approx(0.1)
    assert b.delay(1, draw=0.999) == pytest.approx(0.1999)
    assert b.delay(20, draw=0.999) == 10.0
    assert 0.1 <= b.delay(1) < 0.2


def test_dead_letter_pause_uses_the_same_backoff() -> None:
    first = block(None, 100.0, "refused", max_backoff=10.0)
    assert first.retry_at == 100.5 and first.failures == 1
    later = block(block(first, 100.0, "x", 10.0), 100.0, "x", 10.0)
    assert later.retry_at == 102.0 and later.failures == 3
