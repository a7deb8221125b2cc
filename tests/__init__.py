"""The test suite: unit/ (pure logic) and integration/ (real Kafka, PostgreSQL, S3, Kubernetes)."""
