"""Object stores for the cold path: S3 (aioboto3) or a local directory, same interface.

Owns uploads (multipart above the part size), the compare-and-set progress objects (S3
conditional writes If-Match / If-None-Match or, locally, a lock file around read-compare-write)
and the start-up check that the store really honours those conditions: the lake protocol of
`recorder.sinks.lake.sink` is only as strong as they are, so a store that ignores them is refused.

A progress object is `{"next_offset": N, "generation": G}` or, while a flush is under way,
`{"next_offset": N, "flush_end": E, "generation": G}`: the range [N, E) that every writer must
flush next. G counts the writes of the object (each write stores the read G + 1, the sink's and
`reset-progress`'s alike), so no two writes of one object have the same bytes: after a rewind
to an earlier state its ETag (on S3 an MD5 of the bytes) is new, and a writer still holding the
ETag it read before cannot pass its If-Match. Objects from before the field load as G = 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
)

from recorder.settings import Settings


@dataclass(frozen=True, slots=True)
class StoredProgress:
    offset: int | None
    token: str | None  # S3 ETag or local marker; None when there is no progress object
    flush_end: int | None = None  # a recorded flush range [offset, flush_end) not yet done
    generation: int = 0  # writes of the object so far (0: none, or written before the field)

    def successor(self, token: str, offset: int, flush_end: int | None = None) -> StoredProgress:
        """What the object holds after `write_progress(key, self, offset, flush_end)` returned
        `token`."""
        return StoredProgress(offset, token, flush_end, self.generation + 1)


class ConditionalWritesUnsupported(RuntimeError):
    """The object store accepted a write whose precondition was false."""


class Lake(Protocol):
    description: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def put_file(self, key: str, body: IO[bytes], size: int) -> None: ...
    async def read_progress(self, key: str) -> StoredProgress: ...
    async def write_progress(
        self, key: str, expected: StoredProgress, offset: int, flush_end: int | None = None
    ) -> str | None:
        """Store `offset` (and a pending `flush_end`), with generation `expected.generation + 1`,
        if the stored object is still `expected`; return the new token, or None when the
        precondition failed (someone else moved it)."""
        ...

    async def list_groups(self, root: str) -> list[str]:
        """Names directly under `root` (the consumer groups with progress in this lake)."""
        ...

    async def has_objects(self, prefix: str) -> bool: ...
    async def check(self) -> None: ...
    async def check_conditional_writes(self, scratch_prefix: str) -> None:
        """Raise ConditionalWritesUnsupported unless If-None-Match and If-Match are honoured."""
        ...


class CorruptProgress(ValueError):
    """A progress object that is not what the recorder writes (never retried: a person must look)."""


def encode_progress(offset: int, flush_end: int | None = None, generation: int = 0) -> bytes:
    doc: dict[str, int] = {"next_offset": offset}
    if flush_end is not None:
        doc["flush_end"] = flush_end
    if generation:
        doc["generation"] = generation
    return json.dumps(doc).encode()


def decode_progress(body: bytes, key: str) -> tuple[int, int | None, int]:
    """(next_offset, flush_end, generation) of a progress object (generation 0 when it predates
    the field), or CorruptProgress naming the key."""
    try:
        doc = json.loads(body)
        offset = int(doc["next_offset"])
        end = doc.get("flush_end")
        flush_end = None if end is None else int(end)
        generation = int(doc.get("generation", 0))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptProgress(
            f"progress object {key} is corrupt ({exc!r}): expected JSON "
            '{"next_offset": <int>}; with the recorders stopped, write the next offset to '
            "record into it by hand (reset-progress reads it too)"
        ) from None
    if offset < 0 or generation < 0 or (flush_end is not None and flush_end <= offset):
        raise CorruptProgress(f"progress object {key} holds an impossible range: {doc}")
    return offset, flush_end, generation


def _precondition_failed(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


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
        offset, flush_end, generation = decode_progress(body, key)
        return StoredProgress(offset, res["ETag"], flush_end, generation)

    async def write_progress(
        self, key: str, expected: StoredProgress, offset: int, flush_end: int | None = None
    ) -> str | None:
        condition = {"IfMatch": expected.token} if expected.token else {"IfNoneMatch": "*"}
        try:
            res = await self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=encode_progress(offset, flush_end, expected.generation + 1),
                **condition,
            )
        except ClientError as exc:
            # If-Match on a key that is gone (deleted by hand or by a lifecycle rule) is
            # answered 404: the object is not the one we expected either.
            gone = expected.token is not None and exc.response.get("Error", {}).get("Code") in (
                "NoSuchKey",
                "404",
            )
            if _precondition_failed(exc) or gone:
                return None
            raise
        return str(res["ETag"])

    async def list_groups(self, root: str) -> list[str]:
        found: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self._bucket, Prefix=root, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                found.append(cp["Prefix"][len(root) :].rstrip("/"))
        return found

    async def has_objects(self, prefix: str) -> bool:
        res = await self._client.list_objects_v2(Bucket=self._bucket, Prefix=prefix, MaxKeys=1)
        return bool(res.get("KeyCount", 0))

    async def check_conditional_writes(self, scratch_prefix: str) -> None:
        """Write a scratch object, then try writes whose preconditions are false: each must be
        refused with 412/409. Stores that ignore the headers (older MinIO, Ceph RGW before
        Squid, some gateways) would let a zombie's progress write win."""
        key = f"{scratch_prefix}{uuid.uuid4().hex}"
        where = f"{self.description} ({self._settings.S3_ENDPOINT_URL or 'AWS'})"
        try:
            first = await self._client.put_object(
                Bucket=self._bucket, Key=key, Body=b"1", IfNoneMatch="*"
            )
            trials = [("If-None-Match: *", {"IfNoneMatch": "*"})]
            trials.append(("If-Match: <stale ETag>", {"IfMatch": '"0000000000000000"'}))
            for header, condition in trials:
                try:
                    await self._client.put_object(
                        Bucket=self._bucket, Key=key, Body=b"2", **condition
                    )
                except ClientError as exc:
                    if _precondition_failed(exc):
                        continue
                    raise
                raise ConditionalWritesUnsupported(
                    f"the S3 store at {where} ignored a conditional PUT ({header}); the lake's "
                    "exactly-once protocol needs conditional writes (AWS S3, MinIO, Ceph RGW "
                    "19+, Cloudflare R2 support them). Use such a store or S3_WRITE_ENABLED=false"
                )
            await self._client.put_object(
                Bucket=self._bucket, Key=key, Body=b"3", IfMatch=first["ETag"]
            )
        finally:
            with contextlib.suppress(Exception):
                await self._client.delete_object(Bucket=self._bucket, Key=key)


def _local_token(offset: int, flush_end: int | None, generation: int) -> str:
    """The local lake's token: the object's whole content, generation included (so, as on S3,
    a rewound object never repeats a token)."""
    return f"{generation}:{offset}:{flush_end}"


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
        offset, flush_end, generation = decode_progress(body, key)
        return StoredProgress(
            offset, _local_token(offset, flush_end, generation), flush_end, generation
        )

    async def write_progress(
        self, key: str, expected: StoredProgress, offset: int, flush_end: int | None = None
    ) -> str | None:
        return await asyncio.to_thread(self._write_sync, key, expected, offset, flush_end)

    def _write_sync(
        self, key: str, expected: StoredProgress, offset: int, flush_end: int | None
    ) -> str | None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read_sync(key)
            if current.token != expected.token:
                return None
            tmp = path.with_suffix(".tmp")
            generation = expected.generation + 1
            tmp.write_bytes(encode_progress(offset, flush_end, generation))
            os.replace(tmp, path)
            return _local_token(offset, flush_end, generation)

    async def list_groups(self, root: str) -> list[str]:
        base = self._path(root)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    async def has_objects(self, prefix: str) -> bool:
        base = self._path(prefix)
        return base.is_dir() and any(p.suffix == ".json" for p in base.rglob("*"))

    async def check_conditional_writes(self, scratch_prefix: str) -> None:
        return None  # the lock file makes every progress write a compare-and-set


def make_lake(settings: Settings) -> Lake:
    if settings.LOCAL_LAKE_DIR is not None:
        return LocalLake(settings.LOCAL_LAKE_DIR)
    return S3Lake(settings)
