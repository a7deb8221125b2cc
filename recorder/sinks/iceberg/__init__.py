"""The Iceberg lake: Parquet data files committed to Iceberg tables, progress in the snapshots."""
