"""What users would run instead of the recorder, drained from the same backlog and timed alike.

Kafka Connect (standalone, Debezium JDBC sink) and Benthos (kafka_franz -> sql_insert / Parquet
on S3); their configs and notes are files here, their builds live in the cache (build.py).
"""
