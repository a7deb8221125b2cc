"""A recorder with the plain Parquet lake never loads pyiceberg or SQLAlchemy: together they
cost a third of a second of CPU at every start (and their memory) for nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import asyncio
import sys
from recorder.app import build_recorder
from recorder.runtime.settings import load_settings

async def build():  # aiokafka's clients are made inside a running loop
    build_recorder(load_settings())

asyncio.run(build())
loaded = sorted({m.split('.')[0] for m in sys.modules} & {'pyiceberg', 'sqlalchemy'})
print(','.join(loaded))
"""


def test_a_parquet_lake_recorder_does_not_load_the_iceberg_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={"LAKE_FORMAT": "parquet", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "", out.stdout
