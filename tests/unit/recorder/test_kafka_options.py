"""The consumer's rack (KAFKA_CLIENT_RACK → aiokafka's client_rack, KIP-392 fetch-from-follower)."""

from __future__ import annotations

from recorder.kafka.options import client_options, consumer_options
from recorder.kafka.source import KafkaSource
from recorder.runtime.settings import Settings


def _settings(**env: str) -> Settings:
    return Settings(_env_file=None, KAFKA_TOPICS=["market.tick"], **env)  # type: ignore[arg-type]


def test_no_rack_by_default_and_for_blank() -> None:
    assert consumer_options(_settings()) == {}
    assert consumer_options(_settings(KAFKA_CLIENT_RACK="  ")) == {}


def test_the_rack_is_a_consumer_option_only() -> None:
    settings = _settings(KAFKA_CLIENT_RACK="eu-west-1a")
    assert consumer_options(settings) == {"client_rack": "eu-west-1a"}
    # The producer (dead letters) and the admin clients take no client_rack.
    assert "client_rack" not in client_options(settings)


async def test_the_group_consumer_fetches_with_the_rack() -> None:
    settings = _settings(KAFKA_CLIENT_RACK="eu-west-1b")
    source = KafkaSource(settings, client_options(settings), 0)
    plain = KafkaSource(_settings(), client_options(_settings()), 0)
    try:
        assert source.consumer._client_rack == "eu-west-1b"  # built without connecting
        assert plain.consumer._client_rack is None
    finally:
        await source.consumer.stop()
        await plain.consumer.stop()
