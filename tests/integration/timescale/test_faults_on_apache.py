"""Fault scenario 1 (SIGKILL loop under load) on TimescaleDB's Apache edition: the scenario of
tests/integration/faults/ unchanged, with the `deployment` fixture bound to this folder's
`stack` (native TimescaleDB, see conftest.py)."""

from __future__ import annotations

import pytest

from tests.integration.faults.conftest import deployment
from tests.integration.faults.test_crash_loop import test_sigkill_loop_loses_and_duplicates_nothing

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

__all__ = ["deployment", "test_sigkill_loop_loses_and_duplicates_nothing"]
