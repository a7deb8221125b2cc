"""`datarecorder migrate` on plain PostgreSQL 15: the mode it chooses and why (the Apache
edition's counterpart is tests/integration/timescale/test_apache_mode.py)."""

from __future__ import annotations

import pytest

from tests.fixtures.stack import RecorderEnv
from tests.integration.timescale.test_apache_mode import migrate_cli

pytestmark = pytest.mark.integration


def test_migrate_chooses_plain_mode_without_the_extension(
    fresh_database: str, recorder_env: RecorderEnv
) -> None:
    out = migrate_cli(recorder_env(database=fresh_database))
    assert "mode: postgres (the timescaledb extension is not available on this server)" in out
    assert "0005_attach_partition" in out, out
