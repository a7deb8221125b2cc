"""Kafka I/O: the consumer source, the dead-letter producer, client options, topic IDs."""
