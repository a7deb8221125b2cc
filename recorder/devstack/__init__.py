"""Development services (Kafka, PostgreSQL/TimescaleDB, S3) for the demo, the stack, tests and benchmarks."""
