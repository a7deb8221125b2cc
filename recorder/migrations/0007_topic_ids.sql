-- The Kafka topic ID (KIP-516) of the log each partition's progress counts, learned at the
-- first take-over that sees it: a topic deleted and recreated under the same name has another
-- ID, and its partitions halt instead of resuming at an offset of the old log. NULL: not known
-- yet (a broker before Kafka 2.8, or reset-progress moved the row and the ID is learned again).
ALTER TABLE recorder_offsets ADD COLUMN IF NOT EXISTS topic_id uuid;
