-- Replaces 0004's recorder_ensure_partition: `CREATE TABLE ... PARTITION OF` takes an ACCESS
-- EXCLUSIVE lock on the parent, so one late record's new day waited behind every running
-- analytics query on tick_data, and every query after it waited behind that. The partition is
-- now created as a standalone table and attached with ATTACH PARTITION, which needs only SHARE
-- UPDATE EXCLUSIVE on the parent (compatible with readers and writers). The CHECK constraint
-- matching the range lets the attach skip its validation scan.
CREATE OR REPLACE FUNCTION recorder_ensure_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    child text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(child) IS NOT NULL THEN
        RETURN;
    END IF;
    -- Creators of one parent's partitions queue here (SHARE UPDATE EXCLUSIVE conflicts with
    -- itself, not with readers or writers); once granted, the previous holder's catalog changes
    -- are visible, so the check below sees its table.
    EXECUTE format('LOCK TABLE %I IN SHARE UPDATE EXCLUSIVE MODE', parent);
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
