"""`scripts/stack`'s S3: MinIO (built by scripts/bootstrap) or, where it is not built, moto.

Owns the server process, its port and data, and the recorder's bucket. MinIO keeps its objects
on disk, so `stop s3` ends the server itself (an outage: the port refuses) and `start s3` runs it
again on the same port and data. moto keeps them in memory, so for moto `stop` closes only a TCP
gate in front of it. Which server a stack runs is chosen at its first `up` and kept until `down`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from recorder.devstack import minio as minio_server
from recorder.devstack import procs
from recorder.devstack.procs import ServiceError, log, spawn, terminate, wait_ready
from recorder.devstack.stack.state import ServiceState

NAME = "s3"
BUCKET = "market-data"
REGION = "us-east-1"
ACCESS_KEY = "recorder-test-key"
SECRET_KEY = "recorder-test-secret"
READY_TIMEOUT = float(os.environ.get("DATARECORDER_S3_TIMEOUT", "60"))
# auto: MinIO when it is built, else moto; minio: fail when it is not built; moto: always moto.
SERVER_CHOICE = os.environ.get("DATARECORDER_S3_SERVER", "auto")
GATE_SCRIPT = Path(__file__).resolve().parents[1] / "tcp_gate.py"
MOTO, GATE = "moto.server", GATE_SCRIPT.name  # how our processes are recognised


def choose_server(choice: str, minio_built: bool) -> str:
    if choice not in ("auto", "minio", "moto"):
        raise ServiceError(f"DATARECORDER_S3_SERVER={choice!r}: expected auto, minio or moto")
    if choice == "minio" and not minio_built:
        raise ServiceError(
            "DATARECORDER_S3_SERVER=minio but MinIO is not built; run scripts/bootstrap "
            "(or `python -m recorder.devstack.minio build`)"
        )
    if choice == "auto":
        return "minio" if minio_built else "moto"
    return choice


def server(st: ServiceState) -> str:
    return "minio" if st.data.get("server") == "minio" else "moto"


def configure(st: ServiceState) -> None:
    chosen = choose_server(SERVER_CHOICE, minio_server.built())
    if chosen == "moto" and SERVER_CHOICE == "auto":
        log("MinIO is not built (scripts/bootstrap builds it); S3 falls back to moto")
    port, inner = procs.free_ports(2)
    st.data.update(configured=True, server=chosen, port=port, inner_port=inner)
    st.save()


# --- MinIO: the server is the public port; its objects live in .stack/s3/data ---------------


def _minio_running(st: ServiceState) -> bool:
    return st.pid("minio_pid", minio_server.MARKER) is not None


def _minio_start(st: ServiceState) -> None:
    if _minio_running(st):
        return
    if not minio_server.built():
        raise ServiceError(f"MinIO binary {minio_server.BINARY} is gone; run scripts/bootstrap")
    data = st.dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    # The console port is the inner one: MinIO always listens for its console, even when off.
    argv = minio_server.argv(st.get_int("port"), st.get_int("inner_port"), data)
    env = minio_server.environment(ACCESS_KEY, SECRET_KEY, REGION)
    st.data["minio_pid"] = spawn(argv, st.dir / "minio.log", env=env).pid


def _minio_stop(st: ServiceState, kill: bool) -> None:
    terminate(st.pid("minio_pid", minio_server.MARKER), timeout=10, kill=kill)
    st.data.pop("minio_pid", None)


# --- moto: in memory, so an outage is a closed gate in front of it -------------------------------


def _moto_running(st: ServiceState) -> bool:
    return st.pid("moto_pid", MOTO) is not None


def _moto_start(st: ServiceState) -> None:
    if not _moto_running(st):
        env = dict(os.environ, MOTO_PORT=str(st.get_int("inner_port")))
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1"]
        argv += ["-p", str(st.get_int("inner_port"))]
        st.data["moto_pid"] = spawn(argv, st.dir / "moto.log", env=env).pid
    if st.pid("gate_pid", GATE) is None:
        argv = [
            sys.executable,
            str(GATE_SCRIPT),
            "--listen",
            f"127.0.0.1:{st.get_int('port')}",
            "--target",
            f"127.0.0.1:{st.get_int('inner_port')}",
        ]
        st.data["gate_pid"] = spawn(argv, st.dir / "gate.log").pid


# --- the service interface of stackctl ----------------------------------------------------------


def running(st: ServiceState) -> bool:
    if server(st) == "minio":
        return _minio_running(st)
    return _moto_running(st) and st.pid("gate_pid", GATE) is not None


def start(st: ServiceState) -> None:
    if not st.configured:
        configure(st)
    if server(st) == "minio":
        _minio_start(st)
    else:
        _moto_start(st)
    st.save()


def _client(st: ServiceState) -> Any:
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

    if server(st) == "minio":
        logs, pid = [st.dir / "minio.log"], st.recorded_pid("minio_pid")
    else:
        logs, pid = [st.dir / "moto.log", st.dir / "gate.log"], st.recorded_pid("moto_pid")
    await wait_ready(
        f"s3 at {endpoint(st)}", probe, READY_TIMEOUT, lambda: running(st), logs, pid=pid
    )


def stop(st: ServiceState, kill: bool = False) -> None:
    """An outage: the public port refuses; the objects stay (MinIO's disk, moto's memory)."""
    if server(st) == "minio":
        _minio_stop(st, kill)
    else:
        terminate(st.pid("gate_pid", GATE), timeout=10, kill=kill)
        st.data.pop("gate_pid", None)
    st.save()


def stop_all(st: ServiceState) -> None:
    stop(st, kill=True)
    terminate(st.pid("moto_pid", MOTO), timeout=10)
    st.data.pop("moto_pid", None)
    st.save()


def endpoint(st: ServiceState) -> str:
    return f"http://127.0.0.1:{st.get_int('port')}"


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
    what = f"MinIO {minio_server.VERSION}" if server(st) == "minio" else "moto S3 server"
    return f"{endpoint(st)} ({what}, bucket {BUCKET}, region {REGION})"


def remove(st: ServiceState) -> None:
    stop_all(st)
    shutil.rmtree(st.dir, ignore_errors=True)
