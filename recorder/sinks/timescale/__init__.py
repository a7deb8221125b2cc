"""The database sink: TimescaleDB or PostgreSQL through binary COPY."""
