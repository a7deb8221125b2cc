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
A recorded range also carries the `encoder` of the writer that recorded it (see
`recorder.sinks.lake.encoder`): whoever completes the range encodes with it. `topic_id` is the
Kafka topic ID the progress counts (`recorder.kafka.topic_ids`); every write carries forward the one
of the object it expects, so a writer that means to change it passes an `expected` with another.

A little over 400 lines: the two stores sit side by side so that their conditional writes can
be read against each other.

A little over 400 lines: the S3 and local stores implement one interface side by side, so a
change to the protocol is made to both in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

from recorder.runtime.settings import Settings


@dataclass(frozen=True, slots=True)
class StoredProgress:
    offset: int | None
    token: str | None  # S3 ETag or local marker; None when there is no progress object
    flush_end: int | None = None  # a recorded flush range [offset, flush_end) not yet done
    generation: int = 0  # writes of the object so far (0: none, or written before the field)
    # The recorded range's encoder (`recorder.sinks.lake.encoder.Encoder.doc()`); None without a
    # range, or for a range recorded by a release before the field.
    encoder: dict[str, Any] | None = None
    topic_id: str | None = None  # the topic ID the progress counts; None: not known yet

    def successor(
        self,
        token: str,
        offset: int,
        flush_end: int | None = None,
        encoder: dict[str, Any] | None = None,
    ) -> StoredProgress:
        """What the object holds after `write_progress(key, self, offset, flush_end, encoder)`
        returned `token`."""
        kept = encoder if flush_end is not None else None
        return StoredProgress(offset, token, flush_end, self.generation + 1, kept, self.topic_id)


class ConditionalWritesUnsupported(RuntimeError):
    """The object store accepted a write whose precondition was false."""


class Lake(Protocol):
    description: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def put_file(self, key: str, body: IO[bytes], size: int) -> None: ...
    async def read_progress(self, key: str) -> StoredProgress: ...
    async def write_progress(
        self,
        key: str,
        expected: StoredProgress,
        offset: int,
        flush_end: int | None = None,
        encoder: dict[str, Any] | None = None,
    ) -> str | None:
        """Store `offset` (and a pending `flush_end` with its `encoder`), with generation
        `expected.generation + 1` and `expected.topic_id`, if the stored object is still
        `expected` (its token); return the new token, or None when the precondition failed
        (someone else moved it)."""
        ...

    async def list_names(self, prefix: str) -> list[str]:
        """Names of the objects directly under `prefix`."""
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


def encode_progress(
    offset: int,
    flush_end: int | None = None,
    generation: int = 0,
    encoder: dict[str, Any] | None = None,
    topic_id: str | None = None,
) -> bytes:
    doc: dict[str, Any] = {"next_offset": offset}
    if topic_id is not None:
        doc["topic_id"] = topic_id
    if flush_end is not None:
        doc["flush_end"] = flush_end
        if encoder is not None:
            doc["encoder"] = encoder
    if generation:
        doc["generation"] = generation
    return json.dumps(doc).encode()


def decode_progress(body: bytes, key: str) -> StoredProgress:
    """A progress object's fields (token None: the caller knows it; generation 0, no encoder
    and no topic ID when it predates those fields), or CorruptProgress naming the key."""
    try:
        doc = json.loads(body)
        offset = int(doc["next_offset"])
        end = doc.get("flush_end")
        flush_end = None if end is None else int(end)
        generation = int(doc.get("generation", 0))
        encoder = doc.get("encoder")
        if encoder is not None and not isinstance(encoder, dict):
            raise TypeError(f"encoder is not an object: {encoder!r}")
        topic_id = doc.get("topic_id")
        if topic_id is not None and not isinstance(topic_id, str):
            raise TypeError(f"topic_id is not a string: {topic_id!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptProgress(
            f"progress object {key} is corrupt ({exc!r}): expected JSON "
            '{"next_offset": <int>}; with the recorders stopped, write the next offset to '
            "record into it by hand (reset-progress reads it too)"
        ) from None
    if offset < 0 or generation < 0 or (flush_end is not None and flush_end <= offset):
        raise CorruptProgress(f"progress object {key} holds an impossible range: {doc}")
    kept = encoder if flush_end is not None else None
    return StoredProgress(offset, None, flush_end, generation, kept, topic_id)


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
        return dataclasses.replace(decode_progress(body, key), token=res["ETag"])

    async def write_progress(
        self,
        key: str,
        expected: StoredProgress,
        offset: int,
        flush_end: int | None = None,
        encoder: dict[str, Any] | None = None,
    ) -> str | None:
        condition = {"IfMatch": expected.token} if expected.token else {"IfNoneMatch": "*"}
        try:
            res = await self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=encode_progress(
                    offset, flush_end, expected.generation + 1, encoder, expected.topic_id
                ),
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

    async def list_names(self, prefix: str) -> list[str]:
        found: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix, Delimiter="/"):
            found.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
        return found

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
        stored = decode_progress(body, key)
        assert stored.offset is not None
        token = _local_token(stored.offset, stored.flush_end, stored.generation)
        return dataclasses.replace(stored, token=token)

    async def write_progress(
        self,
        key: str,
        expected: StoredProgress,
        offset: int,
        flush_end: int | None = None,
        encoder: dict[str, Any] | None = None,
    ) -> str | None:
        return await asyncio.to_thread(self._write_sync, key, expected, offset, flush_end, encoder)

    def _write_sync(
        self,
        key: str,
        expected: StoredProgress,
        offset: int,
        flush_end: int | None,
        encoder: dict[str, Any] | None,
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
            tmp.write_bytes(
                encode_progress(offset, flush_end, generation, encoder, expected.topic_id)
            )
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

    async def list_names(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_file() and p.suffix == ".json")

    async def check_conditional_writes(self, scratch_prefix: str) -> None:
        return None  # the lock file makes every progress write a compare-and-set


def make_lake(settings: Settings) -> Lake:
    if settings.LOCAL_LAKE_DIR is not None:
        return LocalLake(settings.LOCAL_LAKE_DIR)
    return S3Lake(settings)
