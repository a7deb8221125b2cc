"""Object stores for the cold path: S3 (aioboto3) or a local directory, same interface.

Owns uploads (multipart above the part size) and the compare-and-set progress objects: S3
conditional writes (If-Match / If-None-Match) or, locally, a lock file around read-compare-write.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
)

from recorder.settings import Settings


@dataclass(frozen=True, slots=True)
class StoredProgress:
    offset: int | None
    token: str | None  # S3 ETag or local marker; None when there is no progress object


class Lake(Protocol):
    description: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def put_file(self, key: str, body: IO[bytes], size: int) -> None: ...
    async def read_progress(self, key: str) -> StoredProgress: ...
    async def write_progress(self, key: str, expected: StoredProgress, offset: int) -> str | None:
        """Store `offset` if the stored object is still `expected`; return the new token, or
        None when the precondition failed (someone else moved it)."""
        ...

    async def check(self) -> None: ...


def is_retriable(exc: BaseException) -> bool:
    # Configuration mistakes never heal by waiting: fail loudly instead of retrying forever.
    if isinstance(exc, (NoCredentialsError, NoRegionError, ParamValidationError)):
        return False
    if isinstance(exc, (OSError, BotoCoreError, asyncio.TimeoutError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or code in {
            "SlowDown",
            "RequestTimeout",
            "InternalError",
            "ServiceUnavailable",
        }
    return False


def _encode(offset: int) -> bytes:
    return json.dumps({"next_offset": offset}).encode()


def _decode(body: bytes) -> int:
    return int(json.loads(body)["next_offset"])


class S3Lake:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._bucket = settings.S3_BUCKET
        self._part = settings.S3_PART_SIZE_MB * 1024 * 1024
        self._session = aioboto3.Session()
        self._client: Any = None
        self._ctx: Any = None
        self.description = f"s3://{self._bucket}/{settings.S3_PREFIX}"

    async def start(self) -> None:
        self._ctx = self._session.client(
            "s3",
            region_name=self._settings.S3_REGION,
            endpoint_url=self._settings.S3_ENDPOINT_URL,
            config=Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
            ),
        )
        self._client = await self._ctx.__aenter__()

    async def close(self) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(None, None, None)

    async def check(self) -> None:
        await self._client.head_bucket(Bucket=self._bucket)

    async def put_file(self, key: str, body: IO[bytes], size: int) -> None:
        body.seek(0)
        if size <= self._part:
            await self._client.put_object(Bucket=self._bucket, Key=key, Body=body.read())
            return
        upload = await self._client.create_multipart_upload(Bucket=self._bucket, Key=key)
        upload_id = upload["UploadId"]
        try:
            parts = []
            number = 1
            while chunk := body.read(self._part):
                res = await self._client.upload_part(
                    Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": res["ETag"], "PartNumber": number})
                number += 1
            await self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await asyncio.shield(
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
            )
            raise

    async def read_progress(self, key: str) -> StoredProgress:
        try:
            res = await self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return StoredProgress(None, None)
            raise
        async with res["Body"] as stream:
            body = await stream.read()
        return StoredProgress(_decode(body), res["ETag"])

    async def write_progress(self, key: str, expected: StoredProgress, offset: int) -> str | None:
        condition = {"IfMatch": expected.token} if expected.token else {"IfNoneMatch": "*"}
        try:
            res = await self._client.put_object(
                Bucket=self._bucket, Key=key, Body=_encode(offset), **condition
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return None
            raise
        return str(res["ETag"])


class LocalLake:
    """The lake in a local directory, for runs without S3 (demo, laptops)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.description = f"file://{root.resolve()}"

    async def start(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        if not os.access(self._root, os.W_OK):
            raise OSError(f"{self._root} is not writable")

    def _path(self, key: str) -> Path:
        return self._root / key

    async def put_file(self, key: str, body: IO[bytes], size: int) -> None:
        await asyncio.to_thread(self._put_sync, key, body)

    def _put_sync(self, key: str, body: IO[bytes]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        body.seek(0)
        with open(tmp, "wb") as out:
            while chunk := body.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)  # readers never see a half-written file

    async def read_progress(self, key: str) -> StoredProgress:
        return await asyncio.to_thread(self._read_sync, key)

    def _read_sync(self, key: str) -> StoredProgress:
        path = self._path(key)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return StoredProgress(None, None)
        offset = _decode(body)
        return StoredProgress(offset, str(offset))

    async def write_progress(self, key: str, expected: StoredProgress, offset: int) -> str | None:
        return await asyncio.to_thread(self._write_sync, key, expected, offset)

    def _write_sync(self, key: str, expected: StoredProgress, offset: int) -> str | None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read_sync(key)
            if current.token != expected.token:
                return None
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_encode(offset))
            os.replace(tmp, path)
            return str(offset)


def make_lake(settings: Settings) -> Lake:
    if settings.LOCAL_LAKE_DIR is not None:
        return LocalLake(settings.LOCAL_LAKE_DIR)
    return S3Lake(settings)
