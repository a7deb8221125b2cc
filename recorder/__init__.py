"""Market-data recorder: Kafka -> TimescaleDB (hot path) + S3 Parquet (cold path), exactly once."""
