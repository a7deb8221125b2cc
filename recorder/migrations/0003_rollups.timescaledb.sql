-- TimescaleDB mode: OHLCV rollups as continuous aggregates with real-time aggregation.
CREATE MATERIALIZED VIEW IF NOT EXISTS tick_1min
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, symbol,
       first(price, time) AS open, max(price) AS high, min(price) AS low,
       last(price, time) AS close, sum(volume) AS volume
FROM tick_data GROUP BY bucket, symbol WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS tick_5min
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '5 minutes', time) AS bucket, symbol,
       first(price, time) AS open, max(price) AS high, min(price) AS low,
       last(price, time) AS close, sum(volume) AS volume
FROM tick_data GROUP BY bucket, symbol WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS tick_1hour
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, symbol,
       first(price, time) AS open, max(price) AS high, min(price) AS low,
       last(price, time) AS close, sum(volume) AS volume
FROM tick_data GROUP BY bucket, symbol WITH NO DATA;

SELECT add_continuous_aggregate_policy('tick_1min', start_offset => INTERVAL '3 hours',
    end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('tick_5min', start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '5 minutes', schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('tick_1hour', start_offset => INTERVAL '7 days',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
