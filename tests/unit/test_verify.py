"""Unit tests of verify's pure comparison: what counts as missing, duplicated, unexpected.

The I/O around it (Kafka, database, lake reads) is exercised by the fault scenarios.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

from recorder.tools.verify import Report, StoreReport, compare, tick_key


def counter(*keys: Hashable) -> Counter[Hashable]:
    return Counter(keys)


def test_equal_multisets_are_ok() -> None:
    r = compare("s", counter("a", "b", "b"), counter("b", "a", "b"))
    assert (r.expected, r.found, r.missing, r.duplicated, r.unexpected) == (3, 3, 0, 0, 0)
    assert r.ok and r.examples == []


def test_identical_payloads_are_two_records() -> None:
    # Two Kafka records with the same content must both be stored: one copy is a loss.
    r = compare("s", counter("a", "a"), counter("a"))
    assert (r.missing, r.duplicated, r.ok) == (1, 0, False)
    assert r.examples == ["missing a"]


def test_extra_copy_is_a_duplicate_not_unexpected() -> None:
    r = compare("s", counter("a"), counter("a", "a", "a"))
    assert (r.missing, r.duplicated, r.unexpected) == (0, 2, 0)
    assert r.examples == ["duplicated x2 a"]


def test_never_produced_is_unexpected() -> None:
    r = compare("s", counter("a"), counter("a", "z", "z"))
    assert (r.missing, r.duplicated, r.unexpected) == (0, 0, 2)
    assert not r.ok


def test_loss_and_duplicate_do_not_cancel_out() -> None:
    # Same count in and out, but one record lost and another stored twice.
    r = compare("s", counter("a", "b"), counter("a", "a"))
    assert (r.expected, r.found) == (2, 2)
    assert (r.missing, r.duplicated) == (1, 1)
    assert not r.ok


def test_examples_are_capped() -> None:
    r = compare("s", Counter(range(20)), Counter())
    assert r.missing == 20 and len(r.examples) == 5


def test_empty_store_of_empty_topic_is_ok() -> None:
    assert compare("s", Counter(), Counter()).ok


def test_report_fails_when_any_store_fails_and_counts_resends_apart() -> None:
    good = StoreReport("a", 1, 1, 0, 0, 0)
    bad = StoreReport("b", 1, 0, 1, 0, 0)
    assert Report([good], dead_letter_duplicates=3).ok
    assert not Report([good, bad]).ok
    d = Report([good, bad], dead_letter_duplicates=3).as_dict()
    assert d["ok"] is False and d["dead_letter_duplicates"] == 3
    assert [s["ok"] for s in d["stores"]] == [True, False]


def test_tick_key_normalises_numbers_from_either_store() -> None:
    # The database returns floats and ints; the lake may return ints for whole prices.
    assert tick_key(1, "X", 71000, 5, None, 0.5) == tick_key(1, "X", 71000.0, 5, None, 0.5)
    assert tick_key(1, "X", 1.0, 5, None, None) != tick_key(2, "X", 1.0, 5, None, None)
