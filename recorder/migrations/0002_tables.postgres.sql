-- Plain PostgreSQL mode: the same tables, range-partitioned by day on event time. The recorder
-- creates partitions ahead (recorder_ensure_partition) before it writes into a new day.
CREATE TABLE IF NOT EXISTS tick_data (
    time        timestamptz      NOT NULL,
    symbol      text             NOT NULL,
    price       double precision NOT NULL,
    volume      bigint           NOT NULL,
    change      double precision,
    change_rate double precision
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS tick_data_symbol_time_idx ON tick_data (symbol, time DESC);

CREATE TABLE IF NOT EXISTS orderbook (
    time   timestamptz NOT NULL,
    symbol text        NOT NULL,
    bids   jsonb       NOT NULL,
    asks   jsonb       NOT NULL
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS orderbook_symbol_time_idx ON orderbook (symbol, time DESC);

-- Creates the daily partition of `parent` that holds `day` (idempotent, safe to race).
CREATE OR REPLACE FUNCTION recorder_ensure_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    child text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(child) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('recorder_ensure_partition:' || child));
    IF to_regclass(child) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            child, parent,
            (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
END;
$$;
