"""S3 for scripts/stack: moto's server mode behind a TCP gate, with the recorder's bucket.

Owns both processes; `stop s3` closes only the gate so the objects survive an outage test.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from stacklib import ServiceState, free_port, spawn, terminate, wait_ready

NAME = "s3"
BUCKET = "market-data"
REGION = "us-east-1"
ACCESS_KEY = "recorder-test-key"
SECRET_KEY = "recorder-test-secret"
READY_TIMEOUT = float(os.environ.get("DATARECORDER_S3_TIMEOUT", "60"))
HERE = Path(__file__).resolve().parent
MOTO, GATE = "moto.server", "tcp_gate.py"  # how our processes are recognised


def configure(st: ServiceState) -> None:
    port = free_port()
    inner = free_port()
    while inner == port:
        inner = free_port()
    st.data.update(configured=True, port=port, inner_port=inner)
    st.save()


def moto_running(st: ServiceState) -> bool:
    return st.pid("moto_pid", MOTO) is not None


def running(st: ServiceState) -> bool:
    return moto_running(st) and st.pid("gate_pid", GATE) is not None


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    if not moto_running(st):
        env = dict(os.environ, MOTO_PORT=str(st.int("inner_port")))
        argv = [
            sys.executable,
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            str(st.int("inner_port")),
        ]
        st.data["moto_pid"] = spawn(argv, st.dir / "moto.log", env=env)
        st.data["bucket_created"] = False  # a new moto process starts empty
    if st.pid("gate_pid", GATE) is None:
        argv = [
            sys.executable,
            str(HERE / "tcp_gate.py"),
            "--listen",
            f"127.0.0.1:{st.int('port')}",
            "--target",
            f"127.0.0.1:{st.int('inner_port')}",
        ]
        st.data["gate_pid"] = spawn(argv, st.dir / "gate.log")
    st.save()


def _client(st: ServiceState):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint(st),
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )


async def ready(st: ServiceState) -> None:
    import asyncio

    client = _client(st)

    async def probe() -> None:
        names = await asyncio.to_thread(
            lambda: {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        )
        if BUCKET not in names:
            await asyncio.to_thread(client.create_bucket, Bucket=BUCKET)

    await wait_ready(
        f"s3 at {endpoint(st)}", probe, READY_TIMEOUT, lambda: running(st), st.dir / "moto.log"
    )
    st.data["bucket_created"] = True
    st.save()


def stop(st: ServiceState, kill: bool = False) -> None:
    """An outage: the gate goes away (port refuses), moto and its objects stay."""
    terminate(st.pid("gate_pid", GATE), timeout=10, kill=kill)
    st.data.pop("gate_pid", None)
    st.save()


def stop_all(st: ServiceState) -> None:
    stop(st, kill=True)
    terminate(st.pid("moto_pid", MOTO), timeout=10)
    st.data.pop("moto_pid", None)
    st.save()


def endpoint(st: ServiceState) -> str:
    return f"http://127.0.0.1:{st.int('port')}"


def address(st: ServiceState) -> str:
    return endpoint(st)


def env(st: ServiceState) -> dict[str, str]:
    return {
        "S3_BUCKET": BUCKET,
        "S3_REGION": REGION,
        "S3_ENDPOINT_URL": endpoint(st),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def describe(st: ServiceState) -> str:
    return f"{endpoint(st)} (moto S3 server, bucket {BUCKET}, region {REGION})"


def remove(st: ServiceState) -> None:
    stop_all(st)
    shutil.rmtree(st.dir, ignore_errors=True)
