"""`datarecorder run` under pyinstrument, for `bench/profile.py`: the session is saved when the
run ends, before the process leaves (`datarecorder run` exits with `os._exit`, which would skip
a profiler wrapped around it from the command line).

Usage: python -m bench.profiled_recorder SESSION_FILE (the recorder's settings from the env).
"""

from __future__ import annotations

import asyncio
import os
import sys

from pyinstrument import Profiler

from recorder.cli import _run
from recorder.runtime import logs
from recorder.runtime.settings import load_settings


def main() -> None:
    session = sys.argv[1]
    settings = load_settings()
    logs.configure(settings.LOG_LEVEL)
    # CPU time, not wall time: the awaits of an I/O-bound drain would otherwise dominate.
    profiler = Profiler(interval=0.002, async_mode="disabled")
    profiler.start()
    try:
        code = asyncio.run(_run(settings))
    finally:
        profiler.stop()
        profiler.last_session.save(session)  # type: ignore[union-attr]
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
