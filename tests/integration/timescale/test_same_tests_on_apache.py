"""The end-to-end tests of plain mode, run unchanged on TimescaleDB 2.19 (Apache edition).

Importing a test function into this module makes pytest collect it here, where `stack` (see
conftest.py) points at the native TimescaleDB server: same records, same assertions, same
queries (the original service's README queries included), another database mode.
"""

from __future__ import annotations

import pytest

from tests.integration.recorder.test_pipeline import (
    test_exactly_once_in_both_stores_with_dead_letters,
)
from tests.integration.recorder.test_retention import (
    test_retention_drops_old_days_and_keeps_recent_rows_and_rollups,
)
from tests.integration.recorder.test_rollups import test_rollups_and_original_queries

pytestmark = pytest.mark.integration

__all__ = [
    "test_exactly_once_in_both_stores_with_dead_letters",
    "test_retention_drops_old_days_and_keeps_recent_rows_and_rollups",
    "test_rollups_and_original_queries",
]
