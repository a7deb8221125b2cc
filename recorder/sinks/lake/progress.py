"""The lake's progress objects as the sink sees them: read, start, identity, commit state.

Owns the cache of each partition's `StoredProgress` (the last one read or written, its ETag
and recorded range), the object keys (group-scoped, with the legacy fallback), and the
requests of the Sink protocol on them (load, store_start, load/store_identity, known
partitions). The protocol's moves (intent, commit) are in `recorder.sinks.lake.service`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection, Mapping

from recorder.core.offsets import TP
from recorder.sinks.lake.config import LakeConfig
from recorder.sinks.lake.parquet import legacy_progress_key, progress_key
from recorder.sinks.lake.store import Lake, StoredProgress

# Writes of the topic ID that lose a race with another writer read again, this many times.
IDENTITY_ATTEMPTS = 5


class LakeProgress:
    """The progress objects of one consumer group in one lake."""

    def __init__(
        self,
        config: LakeConfig,
        lake: Lake,
        owns: Callable[[TP], bool],
        changed: Callable[[], None],
    ) -> None:
        self._config = config
        self.lake = lake
        self._owns = owns  # whether the sink still holds `tp` (not revoked meanwhile)
        self._changed = changed  # a recorded range decides what a flush waits for
        self.stored: dict[TP, StoredProgress] = {}

    def key(self, tp: TP) -> str:
        return progress_key(self._config.prefix, self._config.group, tp.topic, tp.partition)

    async def read(self, tp: TP) -> StoredProgress:
        stored = await self.lake.read_progress(self.key(tp))
        if stored.offset is None:
            # Carried over from before group scoping: the first write creates our own object.
            legacy = await self.lake.read_progress(
                legacy_progress_key(self._config.prefix, tp.topic, tp.partition)
            )
            if legacy.offset is not None:
                return StoredProgress(legacy.offset, None, None, legacy.generation)
        return stored

    def remember(self, tp: TP, stored: StoredProgress) -> None:
        if self._owns(tp):  # not for a partition revoked meanwhile
            self.stored[tp] = stored
            self._changed()

    def forget(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self.stored.pop(tp, None)

    def recorded_end(self, tp: TP, start: int | None) -> int | None:
        """End of the recorded flush range that a batch from `start` must complete next."""
        stored = self.stored.get(tp)
        if stored is None or stored.flush_end is None:
            return None
        return stored.flush_end if start == stored.offset else None

    async def load(self, tps: Collection[TP]) -> dict[TP, int | None]:
        ordered = list(tps)
        values = await asyncio.gather(*(self.read(tp) for tp in ordered))
        self.stored.update(zip(ordered, values, strict=True))
        return {tp: s.offset for tp, s in zip(ordered, values, strict=True)}

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        async def store(tp: TP, offset: int) -> tuple[TP, StoredProgress]:
            expected = self.stored.get(tp, StoredProgress(None, None))
            token = await self.lake.write_progress(self.key(tp), expected, offset)
            if token is not None:
                return tp, expected.successor(token, offset)
            return tp, await self.lake.read_progress(self.key(tp))

        done = await asyncio.gather(*(store(tp, off) for tp, off in starts.items()))
        out: dict[TP, int] = {}
        for tp, stored in done:
            self.stored[tp] = stored
            out[tp] = stored.offset if stored.offset is not None else starts[tp]
        return out

    async def load_identity(self, tps: Collection[TP]) -> dict[TP, str | None]:
        missing = [tp for tp in tps if tp not in self.stored]
        if missing:
            await self.load(missing)
        return {tp: self.stored[tp].topic_id for tp in tps}

    async def store_identity(self, ids: Mapping[TP, str]) -> None:
        async def store(tp: TP, topic_id: str) -> None:
            for _ in range(IDENTITY_ATTEMPTS):  # a race with another writer: read again
                stored = self.stored.get(tp) or await self.read(tp)
                if stored.offset is None or stored.topic_id is not None:
                    return
                carried = dataclasses.replace(stored, topic_id=topic_id)
                token = await self.lake.write_progress(
                    self.key(tp), carried, stored.offset, stored.flush_end, stored.encoder
                )
                if token is not None:
                    self.stored[tp] = dataclasses.replace(
                        carried, token=token, generation=stored.generation + 1
                    )
                    return
                self.stored[tp] = await self.read(tp)

        await asyncio.gather(*(store(tp, i) for tp, i in ids.items()))

    async def known_partitions(self, topics: Collection[str]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for topic in topics:
            folder = progress_key(self._config.prefix, self._config.group, topic, 0)
            names = await self.lake.list_names(folder.rsplit("/", 1)[0] + "/")
            out[topic] = {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}
        return out
