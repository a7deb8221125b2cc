-- Plain PostgreSQL and TimescaleDB Apache modes: rollups kept current by the recorder in the
-- transaction of the rows. State tables carry the times of open and close so partial batches merge correctly;
-- views expose the same columns as TimescaleDB's continuous aggregates.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['tick_1min', 'tick_5min', 'tick_1hour'] LOOP
        EXECUTE format($f$
            CREATE TABLE IF NOT EXISTS %I (
                bucket     timestamptz      NOT NULL,
                symbol     text             NOT NULL,
                open       double precision NOT NULL,
                high       double precision NOT NULL,
                low        double precision NOT NULL,
                close      double precision NOT NULL,
                volume     numeric          NOT NULL,
                open_time  timestamptz      NOT NULL,
                close_time timestamptz      NOT NULL,
                PRIMARY KEY (symbol, bucket)
            )$f$, 'recorder_' || name || '_state');
        EXECUTE format(
            'CREATE OR REPLACE VIEW %I AS SELECT bucket, symbol, open, high, low, close, volume FROM %I',
            name, 'recorder_' || name || '_state');
    END LOOP;
END;
$$;
