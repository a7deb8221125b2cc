"""Before/after in one invocation: the same backlog drained by two recorder trees, side by side.

Usage: .venv/bin/python bench/compare.py --baseline DIR [--ticks N]
(DIR holds another checkout's `recorder/`, e.g. `git archive <commit> | tar -x -C DIR`; the
recorder processes run from it through PYTHONPATH). Owns the comparison runs: the ceilings
(fetch, COPY) once, then per tree the hot path alone, both sinks, ticks and order books apart
(CPU per record), and NUM_CONSUMERS=2 and two processes (more than one core per pod).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scenarios as sc  # noqa: E402
from bench import workload as wl  # noqa: E402
from bench.stack import Stack, acquire  # noqa: E402

Row = tuple[str, str, float, float | None, int]  # (tree, run, rec/s, CPU µs/record, RSS)


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def runs(stack: Stack, topics: wl.Topics, ticks: int, books: int, logs: Path,
               trees: dict[str, Path], scaling: bool) -> list[Row]:  # fmt: skip
    """Every run once per tree, the trees alternating run by run, so a machine whose load
    drifts (it is shared) weighs on both alike."""
    total = ticks + books
    plan: list[tuple[str, wl.Topics, int, dict[str, object]]] = [
        ("hot path alone", topics, total, {"s3": False}),
        ("both sinks", topics, total, {"s3": True, "S3_BATCH_TIMEOUT_SEC": 5}),
        ("ticks alone, hot path", wl.Topics(topics.tick, None), ticks, {"s3": False}),
        (
            "ticks alone, both sinks",
            wl.Topics(topics.tick, None),
            ticks,
            {"s3": True, "S3_BATCH_TIMEOUT_SEC": 5},
        ),
    ]
    if topics.book:
        plan.append(("order books alone, hot path", wl.Topics(topics.book, None), books,
                     {"s3": False}))  # fmt: skip
    if scaling:
        plan.append(("hot path, NUM_CONSUMERS=2", topics, total, {"s3": False, "NUM_CONSUMERS": 2}))
        plan.append(("hot path, 2 processes", topics, total, {"s3": False, "processes": 2}))
    for tree, path in trees.items():
        _check_imports(tree, path)
    out: list[Row] = []
    for run, only, count, kw in plan:
        for tree, path in trees.items():
            log(f"{tree}: {run}")
            # Recorder processes import this tree's recorder: PYTHONPATH names it, and the
            # working directory is the tree too, because `python -m` puts the working
            # directory first on sys.path (from another tree's checkout, "before" ran "after").
            wl.REPO = path
            here = os.getcwd()
            os.chdir(path)
            try:
                d = await sc.drain(stack, only, count, logs, name=f"{tree}-{run[:8]}", **kw)  # type: ignore[arg-type]
            finally:
                os.chdir(here)
                wl.REPO = REPO
            rate = min(d.db_rate, d.s3_rate) if kw["s3"] and d.s3_rate else d.db_rate
            out.append((tree, run, rate, d.cpu_us_per_record, d.peak_rss))
    return out


def _check_imports(tree: str, path: Path) -> None:
    """Fail before measuring when a recorder started as the runs start it would not import
    `path`'s recorder package."""
    found = subprocess.run(
        [sys.executable, "-c", "import recorder; print(recorder.__file__)"],
        env=dict(os.environ, PYTHONPATH=str(path)),
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(path.resolve()):
        raise SystemExit(f"{tree}: a recorder started in {path} imports {found}")
    log(f"{tree}: {found}")


async def measure(stack: Stack, baseline: Path, ticks: int, scaling: bool) -> None:
    books = ticks // 10
    topics = wl.Topics(wl.unique("market.tick.cmp"), wl.unique("market.orderbook.cmp"))
    logs = REPO / "bench" / "out" / "logs"
    await wl.create_topics(stack, topics)
    try:
        await asyncio.to_thread(wl.produce, stack, topics, ticks=ticks, orderbooks=books)
        fetch, _line, kept = await sc.fetch_ceiling(stack, topics, ticks + books, keep=True)
        backlog, decode = sc.decode_backlog(kept)
        del kept
        copy, _line = await sc.copy_ceiling(stack, backlog)
        del backlog
        ceiling = min(fetch, copy)
        trees = {"before": baseline, "after": REPO}
        rows = await runs(stack, topics, ticks, books, logs, trees, scaling)
    finally:
        await wl.delete_topics(stack, [*topics.names, *(f"{t}.dlq" for t in topics.names)])
    print()
    print(f"{ticks:,} ticks + {books:,} order books, 12 partitions each; ceilings: fetch "
          f"{fetch:,.0f} rec/s, COPY {copy:,.0f} rec/s (min {ceiling:,.0f}); batch decode "
          f"{decode:,.0f} rec/s; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    before = {run: rate for tree, run, rate, _, _ in rows if tree == "before"}
    print(f"| {'run':<30} | {'tree':<6} | {'rec/s':>9} | {'of ceiling':>10} | {'after/before':>12} "
          f"| {'CPU µs/rec':>10} | {'peak RSS':>9} |")  # fmt: skip
    print(f"|{'-' * 32}|{'-' * 8}|{'-' * 11}|{'-' * 12}|{'-' * 14}|{'-' * 12}|{'-' * 11}|")
    for tree, run, rate, cpu, rss in sorted(rows, key=lambda r: (r[1], r[0] != "before")):
        vs = f"{rate / before[run]:.2f}x" if tree == "after" and before.get(run) else ""
        cpu_s = f"{cpu:.2f}" if cpu is not None else "—"
        print(f"| {run:<30} | {tree:<6} | {rate:>9,.0f} | {rate / ceiling:>10.2f} | {vs:>12} "
              f"| {cpu_s:>10} | {rss / 2**20:>5,.0f} MiB |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--ticks", type=int, default=300_000)
    ap.add_argument("--no-scaling", action="store_true")
    args = ap.parse_args(argv)
    if not (args.baseline / "recorder" / "pipeline.py").exists():
        ap.error(f"{args.baseline} holds no recorder/ tree")
    stack = acquire()
    os.environ.update(stack.env)
    try:
        asyncio.run(measure(stack, args.baseline.resolve(), args.ticks, not args.no_scaling))
    finally:
        stack.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
