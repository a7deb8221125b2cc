"""The one backoff of the pod: how long to wait after the n-th failure in a row.

Owns `Backoff` (exponential from `first`, doubling per failure, capped, optional jitter), used
by the store retries (recorder.runtime.retry), a sink's failed flushes (recorder.sinks.driver) and the
dead-letter pause (recorder.core.backpressure). Pure: the caller sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Past this many doublings every realistic cap is reached; it keeps 2**n a small number.
MAX_DOUBLINGS = 30


@dataclass(frozen=True, slots=True)
class Backoff:
    """`first` seconds after the first failure, doubled per failure since, at most `cap`; plus
    up to `jitter` seconds drawn at random (so writers that failed together retry apart)."""

    first: float
    cap: float
    jitter: float = 0.0

    def delay(self, failures: int, draw: float | None = None) -> float:
        """Seconds to wait after `failures` failures in a row (1 for the first); `draw` in
        [0, 1) replaces the random draw of the jitter (tests)."""
        doublings = min(max(failures, 1) - 1, MAX_DOUBLINGS)
        base = self.first * 2**doublings
        if self.jitter:
            base += self.jitter * (random.random() if draw is None else draw)
        return float(max(0.0, min(self.cap, base)))
