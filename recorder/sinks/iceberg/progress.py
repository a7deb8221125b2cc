"""The progress an Iceberg table's snapshots carry, and a commit's compare-and-set on it (pure).

Owns the snapshot summary's properties — `datarecorder.offsets` (`{"topic/partition": next
offset}`), `datarecorder.topic-ids` (`{topic: Kafka topic ID}`), `datarecorder.group` — their
reading and writing, and the decision of one commit (DESIGN rule 1): a partition's batch
[start, end) applies only where the stored progress is `start`; it was committed already where
it is `end`; anywhere else the writer is fenced. What a commit records is the stored progress
with its applied partitions moved to their ends, every other partition carried as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from recorder.core.offsets import TP, CasOutcome, cas_outcome

OFFSETS = "datarecorder.offsets"
TOPIC_IDS = "datarecorder.topic-ids"
GROUP = "datarecorder.group"


class CorruptProgress(ValueError):
    """A snapshot summary whose progress is not what the recorder writes (never retried)."""


@dataclass(frozen=True, slots=True)
class TableProgress:
    """The progress of one table: the next offset per partition, the topics' Kafka IDs, and
    the consumer group that recorded it (None: none recorded yet)."""

    group: str | None = None
    offsets: Mapping[TP, int] = field(default_factory=dict)
    topic_ids: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, str]:
        """The snapshot properties that hold this progress (keys sorted: the same progress is
        always the same text)."""
        out = {
            OFFSETS: json.dumps(
                {f"{tp.topic}/{tp.partition}": n for tp, n in sorted(self.offsets.items())}
            ),
            TOPIC_IDS: json.dumps(dict(sorted(self.topic_ids.items()))),
        }
        if self.group is not None:
            out[GROUP] = self.group
        return out

    def topics(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for tp in self.offsets:
            out.setdefault(tp.topic, set()).add(tp.partition)
        return out


def from_summary(props: Mapping[str, str], where: str) -> TableProgress | None:
    """The progress a snapshot's summary holds (None: the snapshot has none, e.g. one written
    by another tool), or CorruptProgress naming `where`."""
    text = props.get(OFFSETS)
    if text is None:
        return None
    try:
        doc = json.loads(text)
        ids = json.loads(props.get(TOPIC_IDS, "{}"))
        if not isinstance(doc, dict) or not isinstance(ids, dict):
            raise TypeError("not a JSON object")
        offsets: dict[TP, int] = {}
        for key, value in doc.items():
            topic, _, partition = str(key).rpartition("/")
            if not topic or not partition.isdigit() or type(value) is not int or value < 0:
                raise ValueError(f"{key!r}: {value!r}")
            offsets[TP(topic, int(partition))] = value
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in ids.items()):
            raise TypeError(f"{TOPIC_IDS} holds a value that is not a string")
    except (ValueError, TypeError) as exc:
        raise CorruptProgress(
            f"the progress in {where} is corrupt ({exc}): expected {OFFSETS} = "
            '{"<topic>/<partition>": <next offset>, ...}'
        ) from None
    return TableProgress(props.get(GROUP), offsets, ids)


def decide(
    stored: Mapping[TP, int], ranges: Mapping[TP, tuple[int | None, int]]
) -> dict[TP, CasOutcome]:
    """Per partition, what a commit of [start, end) may do against the stored progress."""
    return {tp: cas_outcome(stored.get(tp), start, end) for tp, (start, end) in ranges.items()}


def committed(progress: TableProgress, ends: Mapping[TP, int], group: str) -> TableProgress:
    """What a commit records: `progress` with the partitions of `ends` moved there."""
    return replace(progress, group=group, offsets={**progress.offsets, **ends})


def with_starts(
    progress: TableProgress, starts: Mapping[TP, int], group: str
) -> TableProgress | None:
    """`progress` with `starts` for the partitions that have none (None: all have some)."""
    new = {tp: n for tp, n in starts.items() if tp not in progress.offsets}
    return committed(progress, new, group) if new else None


def with_topic_ids(
    progress: TableProgress, ids: Mapping[str, str], group: str
) -> TableProgress | None:
    """`progress` with the topic IDs of topics that have none (None: nothing to add)."""
    new = {t: i for t, i in ids.items() if t not in progress.topic_ids}
    if not new:
        return None
    return replace(progress, group=group, topic_ids={**progress.topic_ids, **new})
