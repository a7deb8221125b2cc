"""The record kinds a topic can carry, and how a topic names its kind."""

from __future__ import annotations

from enum import StrEnum


class TopicKind(StrEnum):
    TICK = "tick"
    ORDERBOOK = "orderbook"


def split_topic(item: str) -> tuple[str, TopicKind]:
    name, sep, kind = item.partition(":")
    if sep:
        try:
            return name, TopicKind(kind)
        except ValueError:
            raise ValueError(f"topic {item!r}: kind must be 'tick' or 'orderbook'") from None
    return name, topic_kind(name)


def topic_kind(item: str) -> TopicKind:
    name, sep, _ = item.partition(":")
    if sep:
        return split_topic(item)[1]
    lowered = name.lower()
    if "orderbook" in lowered or "order_book" in lowered or "order-book" in lowered:
        return TopicKind.ORDERBOOK
    if "tick" in lowered:
        return TopicKind.TICK
    raise ValueError(
        f"cannot tell what topic {name!r} carries: name it with 'tick' or 'orderbook', "
        f"or write '{name}:tick' / '{name}:orderbook'"
    )
