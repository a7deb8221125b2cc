"""The Iceberg store on a real REST catalog (Apache Iceberg's REST catalog server, the stack's
PostgreSQL as its JDBC catalog, the stack's S3 as the warehouse): a zombie's commit, checked
against the snapshot it read before the new owner committed, is refused by the server (409:
the request carries `assert-ref-snapshot-id` for main), and the zombie reads the progress
again and drops its batch; the table holds the new owner's rows only.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pyarrow as pa
import pytest
import requests
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from recorder.core.batching import Batch
from recorder.core.columns import from_rows
from recorder.core.offsets import TP
from recorder.core.records import TickRow
from recorder.runtime.retry import is_transient
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.driver import Outcome
from recorder.sinks.iceberg import catalog
from recorder.sinks.iceberg.catalog import Tables
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.iceberg.progress import TableProgress, with_starts
from recorder.sinks.iceberg.service import IcebergStore
from tests.fixtures.stack import RecorderEnv
from tests.support import as_sent

pytestmark = pytest.mark.integration

HOUR_NS = 3600 * 10**9
T0 = 1_764_133_200 * 10**9  # 2025-11-26T05:00:00Z
TOPIC = "market.tick"
TP0 = TP(TOPIC, 0)


def batch(start: int, end: int) -> Batch:
    """Ticks at offsets [start, end) of TP0, one per millisecond."""
    offsets = list(range(start, end))
    rows = [TickRow(T0 + o * 10**6, "005930", 71000.0 + o, o, None, None) for o in offsets]
    return Batch(
        start=start, end=end, chunks=[from_rows(TopicKind.TICK, offsets, rows)], count=len(rows)
    )


class RacingTables(Tables):
    """`Tables` that runs `before_commit` once, just before its first commit (after the writer
    read the table and decided), keeps every commit request's JSON body, and counts the commits
    the server refused."""

    def __init__(self, config: IcebergConfig, before_commit: Callable[[], None]) -> None:
        super().__init__(config)
        self.before_commit: Callable[[], None] | None = before_commit
        self.requests: list[dict[str, Any]] = []
        self.refused: list[str] = []

    def open(self) -> None:
        super().open()
        catalog = self.catalog
        assert isinstance(catalog, RestCatalog)
        session = catalog._session
        post = session.post

        def recording(url: str, *args: Any, **kwargs: Any) -> Any:
            if "/tables/" in url and kwargs.get("data"):
                self.requests.append(json.loads(kwargs["data"]))
            return post(url, *args, **kwargs)

        session.post = recording  # type: ignore[method-assign,assignment]

    def commit(self, table: Table, files: Iterable[DataFile], progress: TableProgress) -> None:
        hook, self.before_commit = self.before_commit, None
        if hook is not None:
            hook()
        try:
            super().commit(table, files, progress)
        except CommitFailedException as exc:
            self.refused.append(str(exc))
            raise


def rows_in(tables: Tables) -> list[int]:
    table = tables.load(TopicKind.TICK)
    data: pa.Table = table.scan(selected_fields=("volume",)).to_arrow()
    return sorted(data.column("volume").to_pylist())


def zombie_scenario(settings: Settings) -> None:
    config = IcebergConfig.of(settings)
    assert config.kind == "rest"
    topics = {TOPIC: TopicKind.TICK}
    owner_tables = Tables(config)
    owner_tables.open()
    owner = IcebergStore(config, topics, owner_tables, lambda _: None)
    owner.update(TopicKind.TICK, partial(with_starts, starts={TP0: 0}, group=config.group))

    def the_new_owner_commits_first() -> None:
        written = owner.write_sync(TopicKind.TICK, {TP0: batch(0, 50)})
        assert written.outcomes == {TP0: Outcome.WRITTEN}

    zombie_tables = RacingTables(config, the_new_owner_commits_first)
    zombie_tables.open()
    zombie = IcebergStore(config, topics, zombie_tables, lambda _: None)
    read_before = zombie_tables.load(TopicKind.TICK).current_snapshot()
    assert read_before is not None
    try:
        # The zombie still holds [0, 100) of the partition, checked against progress 0.
        written = zombie.write_sync(TopicKind.TICK, {TP0: batch(0, 100)})
        # The server refused the commit checked against the older snapshot, once; the zombie
        # read the progress again (50, not its batch's first offset) and dropped the batch.
        assert len(zombie_tables.refused) == 1, zombie_tables.refused
        assert "branch main" in zombie_tables.refused[0], zombie_tables.refused
        assert written.outcomes == {TP0: Outcome.FENCED}
        assert written.fences[TP0].resume == 50
        # What pyiceberg sent: the zombie's one commit asserted the snapshot it had read.
        commits = [r for r in zombie_tables.requests if r.get("updates")]
        assert len(commits) == 1, commits
        requirements = commits[0]["requirements"]
        assert {
            "type": "assert-ref-snapshot-id",
            "ref": "main",
            "snapshot-id": read_before.snapshot_id,
        } in requirements, requirements
        assert any(r["type"] == "assert-table-uuid" for r in requirements), requirements
        # The table holds the new owner's rows once, and its progress.
        assert rows_in(owner_tables) == list(range(50))
        assert owner_tables.progress(owner_tables.load(TopicKind.TICK)).offsets == {TP0: 50}
    finally:
        zombie_tables.close()
        owner_tables.close()


async def test_a_zombie_commit_against_an_older_snapshot_is_refused_by_the_rest_catalog(
    rest_catalog: dict[str, str], fresh_bucket: str, recorder_env: RecorderEnv
) -> None:
    env = recorder_env(bucket=fresh_bucket, topics=[TOPIC], LAKE_FORMAT="iceberg", **rest_catalog)
    with as_sent.aws_credentials_of(env):
        await asyncio.to_thread(zombie_scenario, as_sent.settings_of(env))


def test_a_rest_catalog_that_never_answers_times_out_as_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyiceberg's HTTP session has no timeout: a catalog that accepts the connection and goes
    silent would hold the store's thread forever. The store's session times out, as an error
    the retry rule waits for (the next attempt reads the progress again)."""
    monkeypatch.setattr(catalog, "REST_READ_TIMEOUT_SEC", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        settings = Settings(
            _env_file=None, ICEBERG_CATALOG_URI=f"http://127.0.0.1:{port}", LAKE_FORMAT="iceberg"
        )
        tables = Tables(IcebergConfig.of(settings))
        with pytest.raises(requests.Timeout) as err:
            tables.open()  # GET /v1/config, accepted by the backlog, never answered
        assert is_transient(err.value)
