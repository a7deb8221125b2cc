"""Scale-down stabilization for the operator's built-in scaler (HPA `behavior` semantics).

Owns `Stabilizer`: pure state over an injected clock value; it never reads time itself.
"""

from __future__ import annotations

import dataclasses
from collections import deque


@dataclasses.dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    reason: str


class Stabilizer:
    """Scales up at once; scales down only to the highest recommendation of the last window.

    A lag that drains for a moment between two bursts then does not remove pods that the next
    burst needs again (no flapping). The history is seeded with the current replica count, so
    a restarted operator also waits a full window before it removes a pod.
    """

    def __init__(self, window_seconds: float, step: int | None = None) -> None:
        self.window_seconds = window_seconds
        # At most `step` pods fewer per window (the HPA's `Pods` policy); None: no limit.
        self.step = step
        self._history: deque[tuple[float, int]] = deque()
        self._last_down: float | None = None

    def decide(self, now: float, recommended: int, current: int) -> ScaleDecision:
        if not self._history:
            self._history.append((now, current))
        self._history.append((now, recommended))
        while self._history and self._history[0][0] < now - self.window_seconds:
            self._history.popleft()
        if recommended >= current:
            return ScaleDecision(recommended, "scale up" if recommended > current else "steady")
        highest = max(r for _, r in self._history)
        replicas = min(current, max(recommended, highest))
        if replicas == current:
            return ScaleDecision(current, f"scale down to {recommended} held by the window")
        if self.step is not None:
            if self._last_down is not None and now - self._last_down < self.window_seconds:
                return ScaleDecision(current, f"scale down to {recommended}: next step later")
            replicas = max(replicas, current - self.step)
        self._last_down = now
        return ScaleDecision(replicas, "scale down")
