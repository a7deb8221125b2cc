"""Profile the recorder under the end-to-end drain: `python bench/profile.py [--ticks N]`.

Owns the profiling run only: a backlog, one recorder under pyinstrument until both stores hold
everything, then bench/out/profile.txt (call tree) and profile-self.txt (self time by function).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
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


async def profile(
    stack: Stack, ticks: int, out: Path, only: str | None = None, s3: bool = True
) -> sc.DrainResult:
    """Drain `ticks` ticks and a tenth as many order books (or only one of them: `only`) into
    both stores (or the database alone: `s3` False) under the profiler."""
    books = ticks // 10
    if only == "book":
        books, ticks = ticks, 0
    elif only == "tick":
        books = 0
    topics = wl.Topics(wl.unique("market.tick.prof"), wl.unique("market.orderbook.prof"))
    await wl.create_topics(stack, topics)
    assert topics.book is not None
    drained = {  # a topic's kind is read from its name, not from its place in Topics
        None: topics,
        "tick": wl.Topics(topics.tick, None),
        "book": wl.Topics(topics.book, None),
    }[only]
    try:
        await asyncio.to_thread(wl.produce, stack, topics, ticks=ticks, orderbooks=books)
        return await sc.drain(
            stack,
            drained,
            ticks + books,
            out / "logs",
            name="profile",
            s3=s3,
            profile=out / "profile.pyisession",
            S3_BATCH_TIMEOUT_SEC=5,
        )
    finally:
        await wl.delete_topics(stack, [*topics.names, *(f"{t}.dlq" for t in topics.names)])


def render(out: Path) -> None:
    session = out / "profile.pyisession"
    for renderer, name, extra in (
        ("text", "profile.txt", ["-p", "processor_options.filter_threshold=0.005"]),
        ("pstats", "profile.pstats", []),
    ):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pyinstrument",
                "--load",
                str(session),
                "-r",
                renderer,
                "-o",
                str(out / name),
                *extra,
            ],
            check=True,
        )
    with open(out / "profile-self.txt", "w") as f:
        stats = pstats.Stats(str(out / "profile.pstats"), stream=f)
        stats.sort_stats("tottime").print_stats(40)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument(
        "--only", choices=("tick", "book"), help="one kind (--ticks then counts that kind)"
    )
    ap.add_argument("--no-s3", action="store_true", help="the database alone (hot path)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stack = acquire()
    os.environ.update(stack.env)
    started = time.monotonic()
    try:
        result = asyncio.run(profile(stack, args.ticks, args.out, args.only, not args.no_s3))
    finally:
        stack.release()
    render(args.out)
    print(
        f"profiled drain of {result.records:,} records: {result.db_rate:,.0f} rec/s into "
        f"PostgreSQL (slowed by the profiler), {time.monotonic() - started:.0f} s in all; "
        f"see {args.out}/profile.txt and profile-self.txt"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
