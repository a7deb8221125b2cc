-- Progress of the hot path: the next Kafka offset per topic-partition that is durable in this
-- database. Updated in the same transaction as the rows (compare-and-set on next_offset).
CREATE TABLE IF NOT EXISTS recorder_offsets (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
