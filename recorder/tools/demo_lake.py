"""The demo's view of its lake: files and rows so far, and the queries it shows at the end.

Owns the two forms of the cold path as the demo reads them: a local Parquet lake (files on
disk, row counts from their footers) and Iceberg tables (the current snapshot's summary, and a
scan through pyiceberg into DuckDB).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq

from recorder.core.kinds import TopicKind
from recorder.runtime.settings import Settings

# A query shown at the end: title, SQL, and the tables it reads (name -> Arrow table) if any.
Query = tuple[str, str, dict[str, Any]]


class DemoLake(Protocol):
    label: str

    def scan(self) -> dict[str, tuple[int, int]]:
        """kind (tick/orderbook) -> (files, rows) recorded so far."""
        ...

    def queries(self) -> list[Query]: ...


@dataclass
class ParquetLake:
    """Parquet files of the local lake and their row counts (metadata read once per file)."""

    root: Path
    label: str = "parquet lake"
    _rows: dict[tuple[str, float], int] = field(default_factory=dict)

    def scan(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for kind in ("tick", "orderbook"):
            files = rows = 0
            base = self.root / kind
            # Hidden files are uploads in progress (written, then renamed into place).
            for path in base.rglob("[!.]*.parquet") if base.exists() else ():
                with contextlib.suppress(FileNotFoundError):
                    key = (str(path), path.stat().st_mtime)
                    if key not in self._rows:
                        self._rows[key] = pq.read_metadata(path).num_rows
                    files += 1
                    rows += self._rows[key]
            out[kind] = (files, rows)
        return out

    def queries(self) -> list[Query]:
        glob = f"{self.root}/tick/*/*/*/*/*.parquet"
        return [
            (
                "the Parquet lake read by DuckDB (hive partitions year/month/day/hour)",
                "SELECT symbol, count(*) AS ticks, min(price) AS low, max(price) AS high,\n"
                "       sum(volume) AS volume\n"
                f"FROM read_parquet('{glob}', hive_partitioning = true)\n"
                "GROUP BY symbol ORDER BY symbol LIMIT 5",
                {},
            ),
            (
                "rows per hour partition",
                "SELECT year, month, day, hour, count(*) AS ticks\n"
                f"FROM read_parquet('{glob}', hive_partitioning = true)\n"
                "GROUP BY ALL ORDER BY ALL",
                {},
            ),
        ]


class IcebergLake:
    """The Iceberg tables, as committed: the current snapshots' totals (files a refused or
    unfinished write left behind are not counted: no snapshot references them)."""

    label = "iceberg tables"

    def __init__(self, settings: Settings) -> None:
        # Imported here: the Parquet demo needs neither pyiceberg nor SQLAlchemy.
        from recorder.sinks.iceberg.config import IcebergConfig

        self._config = IcebergConfig.of(settings)
        self._catalog: Any = None

    @contextlib.contextmanager
    def _tables(self) -> Iterator[dict[str, Any]]:
        from pyiceberg.catalog.sql import SqlCatalog
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        if self._catalog is None:
            props = self._config.catalog_properties()
            self._catalog = SqlCatalog(self._config.catalog, **props)
        found = {}
        for kind in TopicKind:
            with contextlib.suppress(NoSuchTableError, NoSuchNamespaceError):
                found[str(kind)] = self._catalog.load_table(self._config.table(kind))
        yield found

    def scan(self) -> dict[str, tuple[int, int]]:
        out = {str(kind): (0, 0) for kind in TopicKind}
        with self._tables() as tables:
            for kind, tbl in tables.items():
                snapshot = tbl.current_snapshot()
                if snapshot is None or snapshot.summary is None:
                    continue
                props = snapshot.summary.additional_properties
                out[kind] = (
                    int(props.get("total-data-files", 0)),
                    int(props.get("total-records", 0)),
                )
        return out

    def queries(self) -> list[Query]:
        with self._tables() as tables:
            tick = tables.get("tick")
            if tick is None:
                return []
            arrow = tick.scan().to_arrow()
            snapshots = [
                {
                    "snapshot": s.snapshot_id,
                    "committed_ms": s.timestamp_ms,
                    "records": int(
                        (s.summary.additional_properties if s.summary else {}).get(
                            "added-records", 0
                        )
                    ),
                    "offsets": (s.summary.additional_properties if s.summary else {}).get(
                        "datarecorder.offsets", ""
                    )[:60],
                }
                for s in tick.snapshots()[-5:]
            ]
        import pyarrow as pa

        name = self._config.table(TopicKind.TICK)
        return [
            (
                f"the Iceberg table {name} scanned by pyiceberg, queried by DuckDB",
                "SELECT symbol, count(*) AS ticks, min(price) AS low, max(price) AS high,\n"
                "       sum(volume) AS volume\n"
                "FROM tick  -- pyiceberg: catalog.load_table(...).scan().to_arrow()\n"
                "GROUP BY symbol ORDER BY symbol LIMIT 5",
                {"tick": arrow},
            ),
            (
                f"the last snapshots of {name} (each a commit, its progress in the summary)",
                "SELECT snapshot, committed_ms, records, offsets FROM snapshots",
                {"snapshots": pa.Table.from_pylist(snapshots)},
            ),
        ]


def demo_lake(settings: Settings, root: Path) -> DemoLake:
    """The demo's lake for `settings` (LAKE_FORMAT)."""
    if settings.LAKE_FORMAT == "iceberg":
        return IcebergLake(settings)
    return ParquetLake(root)
