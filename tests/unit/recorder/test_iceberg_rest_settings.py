"""ICEBERG_CATALOG_URI as a REST catalog: the settings that choose it and authenticate to it,
the errors that name the variable and the expected form, and pyiceberg's properties from them.

The same catalog for real: tests/integration/recorder/test_iceberg.py (`rest`) against Apache
Iceberg's REST catalog server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.runtime.settings import ConfigError, Settings, is_rest_catalog, load_settings
from recorder.sinks.iceberg.config import IcebergConfig

REST = "https://catalog.example.com:8181"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_an_http_url_is_a_rest_catalog_and_anything_else_sql() -> None:
    assert is_rest_catalog("http://127.0.0.1:8181") and is_rest_catalog(" HTTPS://c/api/catalog")
    for uri in ("", "postgresql+psycopg2://ice@db/cat", "sqlite:///cat.db"):
        assert not is_rest_catalog(uri)


def test_client_credentials_become_pyicebergs_oauth2_properties_and_are_never_shown() -> None:
    s = load_settings(
        ICEBERG_CATALOG_URI=REST + "/",
        ICEBERG_CATALOG_CREDENTIAL="recorder:s3cr3t:with-colon",
        ICEBERG_CATALOG_SCOPE="PRINCIPAL_ROLE:ALL",
        ICEBERG_WAREHOUSE="market",
        S3_ENDPOINT_URL="http://minio:9000",
    )
    config = IcebergConfig.of(s)
    assert config.kind == "rest"
    props = config.catalog_properties()
    assert props["uri"] == REST + "/"
    assert props["credential"] == "recorder:s3cr3t:with-colon"  # the secret may hold ':'
    assert props["oauth2-server-uri"] == REST + "/v1/oauth/tokens"
    assert props["scope"] == "PRINCIPAL_ROLE:ALL"
    assert props["warehouse"] == "market"  # the REST `warehouse`, as given
    assert props["s3.endpoint"] == "http://minio:9000"  # the data files' FileIO: S3_*
    assert "pool_pre_ping" not in props and "token" not in props
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in config.where()
    assert "s3cr3t" not in str(s.safe_dump())


def test_a_token_is_sent_as_is_and_an_external_token_endpoint_is_kept() -> None:
    s = load_settings(ICEBERG_CATALOG_URI=REST, ICEBERG_CATALOG_TOKEN="dapi123")
    props = IcebergConfig.of(s).catalog_properties()
    assert props["token"] == "dapi123"
    assert "credential" not in props and "warehouse" not in props  # none asked: the default
    s = load_settings(
        ICEBERG_CATALOG_URI=REST,
        ICEBERG_CATALOG_CREDENTIAL="id:secret",
        ICEBERG_CATALOG_OAUTH2_SERVER_URI="https://idp/token",
    )
    assert IcebergConfig.of(s).catalog_properties()["oauth2-server-uri"] == "https://idp/token"


def test_an_sql_catalog_keeps_its_warehouse_default_and_properties() -> None:
    config = IcebergConfig.of(load_settings(ICEBERG_CATALOG_URI="postgresql+psycopg2://i@db/c"))
    assert config.kind == "sql" and config.auth == {}
    assert config.catalog_properties()["warehouse"] == "s3://market-data/market-data"
    assert config.catalog_properties()["pool_pre_ping"] == "true"


@pytest.mark.parametrize(
    ("env", "variable", "says"),
    [
        (
            {"ICEBERG_CATALOG_URI": "https://id:secret@catalog:8181"},
            "ICEBERG_CATALOG_URI",
            "carries no credentials",
        ),
        ({"ICEBERG_CATALOG_URI": "https://"}, "ICEBERG_CATALOG_URI", "https://catalog:8181"),
        (
            {"ICEBERG_CATALOG_URI": REST, "ICEBERG_CATALOG_CREDENTIAL": "no-colon"},
            "ICEBERG_CATALOG_CREDENTIAL",
            "expected client_id:client_secret",
        ),
        (
            {"ICEBERG_CATALOG_URI": REST, "ICEBERG_CATALOG_CREDENTIAL": "id:"},
            "ICEBERG_CATALOG_CREDENTIAL",
            "expected client_id:client_secret",
        ),
        (
            {"ICEBERG_CATALOG_URI": "", "ICEBERG_CATALOG_CREDENTIAL": "id:secret"},
            "ICEBERG_CATALOG_CREDENTIAL",
            "is for a REST catalog",
        ),
        (
            {"ICEBERG_CATALOG_URI": "postgresql://i@db/c", "ICEBERG_CATALOG_TOKEN": "t"},
            "ICEBERG_CATALOG_TOKEN",
            "is for a REST catalog",
        ),
        (
            {"ICEBERG_CATALOG_URI": REST, "ICEBERG_CATALOG_TOKEN": "Bearer abc"},
            "ICEBERG_CATALOG_TOKEN",
            "the bearer token alone",
        ),
        (
            {
                "ICEBERG_CATALOG_URI": REST,
                "ICEBERG_CATALOG_CREDENTIAL": "id:secret",
                "ICEBERG_CATALOG_TOKEN": "tok",
            },
            "ICEBERG_CATALOG_TOKEN",
            "not both",
        ),
        (
            {"ICEBERG_CATALOG_URI": REST, "ICEBERG_CATALOG_PASSWORD": "pw"},
            "ICEBERG_CATALOG_PASSWORD",
            "ICEBERG_CATALOG_CREDENTIAL or ICEBERG_CATALOG_TOKEN",
        ),
    ],
)
def test_a_wrong_catalog_setting_names_the_variable_and_the_form(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert f"{variable}=" in message and says in message, message
    # A secret's value never reaches the message (it goes to the logs).
    for name in ("ICEBERG_CATALOG_CREDENTIAL", "ICEBERG_CATALOG_TOKEN", "ICEBERG_CATALOG_PASSWORD"):
        if name in env and name == variable:
            assert repr(env[name]) not in message, message
