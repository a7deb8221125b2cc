-- Replaces 0002's recorder_ensure_partition, which was not safe to race after all: the second of
-- two writers creating the same day waited on the advisory lock, then still did not see the
-- first one's new table (an advisory lock does not refresh the session's catalog view, a table
-- lock does) and failed with "relation ... already exists", which killed its flush.
CREATE OR REPLACE FUNCTION recorder_ensure_partition(parent text, day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    child text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(child) IS NOT NULL THEN
        RETURN;
    END IF;
    -- Creators of one parent's partitions queue here; once granted, the catalog changes of the
    -- previous holder are visible, so the check below sees its table.
    EXECUTE format('LOCK TABLE %I IN SHARE UPDATE EXCLUSIVE MODE', parent);
    IF to_regclass(child) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            child, parent,
            (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
EXCEPTION
    -- Belt and braces: whoever created it first, the partition exists, which is all we want.
    WHEN duplicate_table OR unique_violation THEN
        NULL;
END;
$$;
