"""The Iceberg catalog as the store sees it: synchronous pyiceberg, called in worker threads.

Owns opening the catalog (pyiceberg's RestCatalog for an HTTP(S) URL, its requests timed out,
else its SqlCatalog), creating the namespace and the tables when missing (partitioned by
hour(timestamp), and by bucket(N, symbol) with ICEBERG_SYMBOL_BUCKETS; snappy Parquet), reading the progress of a table's current branch, writing data
files, and one commit attempt: a compare-and-swap on the branch's current snapshot, never
retried by pyiceberg (its retry would rebase a commit checked against an older snapshot).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.table import Table, Transaction
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.table.update import AssertTableUUID
from pyiceberg.transforms import BucketTransform, HourTransform
from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter

from recorder.runtime.settings import TopicKind
from recorder.sinks.iceberg import rows, wait
from recorder.sinks.iceberg.config import IcebergConfig
from recorder.sinks.iceberg.progress import TableProgress, from_summary

# The tables' properties at creation. pyiceberg's own commit retries are off as well (the store
# never uses them: see `commit`), so that another pyiceberg writer of these tables does not
# rebase its commits either.
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "snappy",
    "commit.retry.num-retries": "0",
    # Every commit writes a metadata file: keep the last hundred, not one per commit forever.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
}
FIRST_PARTITION_FIELD_ID = 1000
# A REST catalog connects within this and answers a request within that, or the request fails
# (an OSError: retried, and a commit whose answer never came is decided by the progress read
# again). pyiceberg's session has no timeout of its own: a catalog that accepted the connection
# and went silent would hold a commit forever.
REST_CONNECT_TIMEOUT_SEC = 10.0
REST_READ_TIMEOUT_SEC = 60.0


class _TimeoutAdapter(HTTPAdapter):
    """requests' adapter with a default timeout (a request's own timeout wins)."""

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (REST_CONNECT_TIMEOUT_SEC, REST_READ_TIMEOUT_SEC)
        return super().send(request, *args, **kwargs)


class _RestCatalog(RestCatalog):
    """pyiceberg's RestCatalog whose HTTP requests time out (its session is made, and asks
    for the catalog's config, inside the constructor: the adapter goes in there)."""

    def _create_session(self) -> Session:
        session = super()._create_session()
        adapter = _TimeoutAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


class SchemaMismatch(RuntimeError):
    """An existing table has other columns than the recorder writes."""


def table_schema(kind: TopicKind, levels: rows.Levels) -> Schema:
    converted = Catalog._convert_schema_if_needed(rows.schema(kind, levels))
    return assign_fresh_schema_ids(converted)


def partitioning(schema: Schema, symbol_buckets: int = 0) -> PartitionSpec:
    """hour(timestamp), and bucket(symbol_buckets, symbol) after it when asked for."""
    source = schema.find_field(rows.PARTITION_SOURCE).field_id
    fields = [PartitionField(source, FIRST_PARTITION_FIELD_ID, HourTransform(), "timestamp_hour")]
    if symbol_buckets:
        symbol = schema.find_field("symbol").field_id
        fields.append(
            PartitionField(
                symbol,
                FIRST_PARTITION_FIELD_ID + 1,
                BucketTransform(symbol_buckets),
                "symbol_bucket",
            )
        )
    return PartitionSpec(*fields)


class Tables:
    """The recorder's tables in one catalog."""

    def __init__(self, config: IcebergConfig) -> None:
        self._config = config
        self._catalog: SqlCatalog | RestCatalog | None = None

    @property
    def catalog(self) -> SqlCatalog | RestCatalog:
        if self._catalog is None:
            props = self._config.catalog_properties()
            if self._config.kind == "rest":
                # Asks GET /v1/config (and, with a credential, a token) at once: a catalog
                # that cannot be reached raises here, and is retried like any other outage.
                self._catalog = _RestCatalog(self._config.catalog, **props)
            else:
                wait.install()  # no catalog call waits forever on a silent server
                # Creates the JDBC catalog's tables when missing (pyiceberg's
                # init_catalog_tables).
                self._catalog = SqlCatalog(self._config.catalog, **props)
        return self._catalog

    def open(self) -> None:
        """Connect; create the namespace and the tables that are missing; check the others."""
        catalog = self.catalog
        catalog.create_namespace_if_not_exists(self._config.namespace)
        for kind in TopicKind:
            schema = table_schema(kind, self._config.levels)
            table = catalog.create_table_if_not_exists(
                self._config.table(kind),
                schema,
                partition_spec=partitioning(schema, self._config.symbol_buckets),
                properties=TABLE_PROPERTIES,
            )
            have = [f.name for f in table.schema().fields]
            want = [f.name for f in schema.fields]
            if have != want:
                raise SchemaMismatch(
                    f"Iceberg table {self._config.table(kind)} has the columns {have}, the "
                    f"recorder writes {want} (PARQUET_ORDERBOOK_LEVELS={self._config.levels}); "
                    "record into another table (ICEBERG_*_TABLE) or migrate this one"
                )

    def probe(self) -> None:
        self.catalog.table_exists(self._config.table(TopicKind.TICK))

    def close(self) -> None:
        if isinstance(self._catalog, SqlCatalog):
            self._catalog.engine.dispose()
        elif isinstance(self._catalog, RestCatalog):
            self._catalog._session.close()  # its HTTP connections (pyiceberg has no close)

    def name(self, kind: TopicKind) -> str:
        return self._config.table(kind)

    def load(self, kind: TopicKind) -> Table:
        return self.catalog.load_table(self._config.table(kind))

    def progress(self, table: Table) -> TableProgress:
        """The progress of the newest snapshot of the current branch that carries one (a
        snapshot another tool committed on top carries none)."""
        where = f"table {'.'.join(table.name())}"
        for snapshot in ancestors_of(table.current_snapshot(), table.metadata):
            if snapshot.summary is None:
                continue
            found = from_summary(snapshot.summary.additional_properties, where)
            if found is not None:
                return found
        return TableProgress()

    def write_files(self, table: Table, data: pa.Table) -> list[DataFile]:
        """Upload `data` as the table's data files (one or more per hour partition); nothing
        references them until a commit does."""
        if not data.num_rows:
            return []
        return list(_dataframe_to_data_files(table.metadata, data, table.io))

    def commit(self, table: Table, files: Iterable[DataFile], progress: TableProgress) -> None:
        """Append `files` with `progress` in the snapshot summary, if the branch's current
        snapshot is still `table`'s; CommitFailedException when it is not (nothing applied)."""
        txn = table.transaction()
        with txn.update_snapshot(snapshot_properties=progress.summary()).fast_append() as append:
            for data_file in files:
                append.append_data_file(data_file)
        self.commit_staged(table, txn)

    def commit_staged(self, table: Table, txn: Transaction) -> None:
        """Commit what `txn` (begun on `table`) staged, once: CommitFailedException when the
        branch's current snapshot is no longer `table`'s (nothing applied)."""
        # The snapshot producers assert the current snapshot id (AssertRefSnapshotId on main,
        # the first one staged). The SQL catalog checks the requirements against the metadata
        # it loads and swaps the metadata location only if it is still that one; a REST
        # catalog gets them in the request (`assert-ref-snapshot-id`, `assert-table-uuid`)
        # and answers 409 (CommitFailedException) when one fails. Either way one attempt:
        # Transaction.commit_transaction would retry on conflict by rebasing the staged files
        # and summary onto the new snapshot, a double commit. (RestCatalog.commit_table's own
        # retry is only for an expired token: the same request again, the same requirements.)
        requirements = (*txn._requirements, AssertTableUUID(uuid=table.metadata.table_uuid))
        self.catalog.commit_table(table, requirements, txn._updates)

    def discard(self, table: Table, files: Iterable[DataFile]) -> None:
        """Best effort: delete data files no commit references (a refused or fenced write)."""
        for data_file in files:
            with contextlib.suppress(Exception):
                table.io.delete(data_file.file_path)
