"""Sinks: where records become durable (TimescaleDB hot path, S3/local Parquet cold path).

Each sink is config + encoder + writer + retry rule; all share batching.py and base.py.
"""
