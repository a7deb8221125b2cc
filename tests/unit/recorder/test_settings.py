"""Settings: original names and defaults, readable errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.runtime.settings import ConfigError, Settings, TopicKind, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_of_the_original_service() -> None:
    s = load_settings()
    assert s.KAFKA_TOPICS == ["market.tick", "market.orderbook"]
    assert (s.BATCH_SIZE, s.BATCH_TIMEOUT_MS, s.S3_BATCH_SIZE, s.S3_BATCH_TIMEOUT_SEC) == (
        1000,
        1000,
        10000,
        60,
    )
    assert (s.NUM_CONSUMERS, s.DB_WRITE_WORKERS, s.MAX_BUFFER_SIZE) == (1, 4, 500_000)
    assert s.S3_WRITE_ENABLED is True
    assert s.topics() == {"market.tick": TopicKind.TICK, "market.orderbook": TopicKind.ORDERBOOK}


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BATCH_SIZE=5000\nKAFKA_BROKERS=a:1, b:2\n")
    monkeypatch.setenv("S3_WRITE_ENABLED", "false")
    s = load_settings()
    assert (
        s.BATCH_SIZE == 5000 and s.KAFKA_BROKERS == ["a:1", "b:2"] and s.S3_WRITE_ENABLED is False
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("BATCH_SIZE", "many", "BATCH_SIZE='many'"),
        ("BATCH_SIZE", "0", "greater than or equal to 1"),
        ("KAFKA_BROKERS", "kafka", "expected host:port"),
        ("KAFKA_TOPICS", "prices", "cannot tell what topic 'prices' carries"),
        ("KAFKA_TOPICS", "prices:quotes", "kind must be 'tick' or 'orderbook'"),
        ("S3_WRITE_ENABLED", "maybe", "S3_WRITE_ENABLED"),
        ("PARQUET_TIMESTAMP_UNIT", "ms", "PARQUET_TIMESTAMP_UNIT"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in str(info.value) and fragment in str(info.value)
    assert "example:" in str(info.value)


def test_explicit_topic_kinds() -> None:
    s = load_settings(KAFKA_TOPICS="prices:tick,depth:orderbook")
    assert s.topics() == {"prices": TopicKind.TICK, "depth": TopicKind.ORDERBOOK}


def test_secrets_are_masked() -> None:
    s = load_settings(TIMESCALEDB_PASSWORD="hunter2")
    dumped = s.safe_dump()
    assert dumped["TIMESCALEDB_PASSWORD"] == "***" and "hunter2" not in repr(s)


def test_every_setting_documents_itself() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert field.examples, name
