-- Replaces 0005's recorder_ensure_partition: a day table that exists but is not a partition
-- (detached and not dropped: retention interrupted between its DETACH and its DROP, or
-- detached by hand) made the function return as if the day were there, so every row of that
-- day failed to route ("no partition of relation found") and its writer retried forever. Such
-- a table is now kept under another name and the day gets a new partition.
CREATE OR REPLACE FUNCTION recorder_ensure_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    child text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    aside text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_inherits
               WHERE inhrelid = to_regclass(child) AND inhparent = to_regclass(parent)) THEN
        RETURN;
    END IF;
    -- Creators of one parent's partitions queue here (SHARE UPDATE EXCLUSIVE conflicts with
    -- itself, not with readers or writers); once granted, the previous holder's catalog changes
    -- are visible, so the checks below see its table.
    EXECUTE format('LOCK TABLE %I IN SHARE UPDATE EXCLUSIVE MODE', parent);
    IF to_regclass(child) IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(child)) THEN
        -- Its rows stay where they are (retention meant to drop them, or someone keeps them):
        -- the table is renamed, never attached again nor dropped here.
        aside := format('%s_detached_%s', child, to_char(clock_timestamp(), 'YYYYMMDDHH24MISS'));
        EXECUTE format('ALTER TABLE %I RENAME TO %I', child, aside);
        RAISE WARNING 'datarecorder: % was not a partition of %: renamed to %; a new % holds the day',
            child, parent, aside, child;
    END IF;
    IF to_regclass(child) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT %I CHECK (time >= %L AND time < %L))',
            child, parent, child || '_range', lo, hi);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            parent, child, lo, hi);
        -- Redundant once attached (the partition bound says the same); dropping it is cheap.
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', child, child || '_range');
    END IF;
EXCEPTION
    -- Belt and braces: whoever created it first, the partition exists, which is all we want.
    WHEN duplicate_table OR unique_violation OR duplicate_object THEN
        NULL;
END;
$$;
