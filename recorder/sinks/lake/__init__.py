"""The lake sink: hive-partitioned Parquet on S3 or a local folder."""
