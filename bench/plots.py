"""PNG plots of one full run: throughput over time next to the ceilings, latency, scaling.

Owns the pictures only (matplotlib, headless); the numbers come from the scenarios.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.report import Results

Timeline = Sequence[tuple[float, float]]


def rate_series(line: Timeline, window: float = 1.0) -> tuple[list[float], list[float]]:
    """records/s over time from cumulative (t, count) samples, over `window`-second steps."""
    xs: list[float] = []
    ys: list[float] = []
    if not line:
        return xs, ys
    last_t, last_n = line[0]
    for t, n in line[1:]:
        if t - last_t >= window:
            xs.append(t)
            ys.append((n - last_n) / (t - last_t))
            last_t, last_n = t, n
    return xs, ys


def throughput(out: Path, lines: dict[str, Timeline], naive: float | None) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label, line in lines.items():
        xs, ys = rate_series(line)
        ax.plot(xs, ys, label=label, linewidth=1.6)
    if naive:
        ax.axhline(naive, color="grey", linestyle=":", label="naive: INSERT per message")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("records / s (1 s windows)")
    ax.set_title("Draining the same backlog: recorder vs. the ceilings")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    path = out / "throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(out: Path, samples_ms: Sequence[float], title: str) -> Path:
    ordered = sorted(samples_ms)
    fig, (h, c) = plt.subplots(1, 2, figsize=(10, 4))
    h.hist(ordered, bins=80, color="tab:blue")
    h.set_yscale("log")
    h.set_xlabel("ms from Kafka append to visible in PostgreSQL")
    h.set_ylabel("records")
    h.grid(alpha=0.3)
    n = len(ordered)
    c.plot(ordered, [(i + 1) / n for i in range(n)], color="tab:orange")
    c.set_xlabel("ms")
    c.set_ylabel("fraction of records visible")
    c.grid(alpha=0.3)
    fig.suptitle(title)
    path = out / "latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling(out: Path, r: Results) -> Path | None:
    if not r.scaling:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(r.scaling)
    ax.barh(names, [r.scaling[n] for n in names], color="tab:green")
    if r.copy_ceiling:
        ax.axvline(r.copy_ceiling, color="tab:red", linestyle="--", label="COPY ceiling")
        ax.legend(fontsize=8)
    ax.set_xlabel("records / s into PostgreSQL (2 shared cores)")
    ax.grid(alpha=0.3, axis="x")
    path = out / "scaling.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
