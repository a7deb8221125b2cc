-- TimescaleDB modes (both editions): hypertables partitioned by event time.
CREATE TABLE IF NOT EXISTS tick_data (
    time        timestamptz      NOT NULL,
    symbol      text             NOT NULL,
    price       double precision NOT NULL,
    volume      bigint           NOT NULL,
    change      double precision,
    change_rate double precision
);
SELECT create_hypertable('tick_data', 'time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS tick_data_symbol_time_idx ON tick_data (symbol, time DESC);

CREATE TABLE IF NOT EXISTS orderbook (
    time   timestamptz NOT NULL,
    symbol text        NOT NULL,
    bids   jsonb       NOT NULL,
    asks   jsonb       NOT NULL
);
SELECT create_hypertable('orderbook', 'time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS orderbook_symbol_time_idx ON orderbook (symbol, time DESC);
