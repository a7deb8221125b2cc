"""CPU seconds of a process and of a local PostgreSQL server (psutil), for CPU-per-row figures.

Owns the arithmetic of a server's CPU: the postmaster's own time, its exited children's (it
waits for them, so their time lands in its children_* fields) and its live children's, minus
the benchmark's own probe connection.
"""

from __future__ import annotations

import psutil


def process_cpu(pid: int) -> float:
    """User + system seconds of `pid` (all threads) and of its children that exited."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy, all cores (user, nice, system, interrupts;
    not idle, I/O wait or time stolen by the hypervisor)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def postmaster_of(backend_pid: int) -> int | None:
    """The server process of a backend (its parent), when the server runs on this machine."""
    try:
        return int(psutil.Process(backend_pid).ppid())
    except psutil.Error:
        return None


def server_cpu(postmaster: int, exclude: int | None = None) -> float:
    """CPU so far of a PostgreSQL server: postmaster, backends, walwriter, checkpointer...,
    without the backend `exclude` (the benchmark's own probe)."""
    total = process_cpu(postmaster)
    try:
        kids = psutil.Process(postmaster).children()
    except psutil.Error:
        return total
    for child in kids:
        if child.pid == exclude:
            continue
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue  # exited meanwhile: its time is in the postmaster's children_* next read
        total += float(t.user + t.system)
    return total
