"""The recorder's configuration: one validated object built from environment variables.

Owns every setting's name, default, meaning and example in one place; the README's reference
table is generated from (and tested against) `Settings.model_fields`.

Over 400 lines because it is the table of every variable (one field each with its description
and example) and their validators.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recorder.core.errors import ConfigError as ConfigError
from recorder.core.kinds import TopicKind as TopicKind
from recorder.core.kinds import split_topic as split_topic
from recorder.core.kinds import topic_kind as topic_kind
from recorder.core.start_from import START_FROM_FORM as START_FROM_FORM
from recorder.core.start_from import StartFrom as StartFrom
from recorder.core.start_from import parse_rfc3339_ms as parse_rfc3339_ms
from recorder.core.start_from import parse_start_from as parse_start_from

# An Iceberg namespace or table name: one level (a dot would nest namespaces), nothing to quote.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# An AWS region name (eu-west-1, us-gov-west-1, cn-north-1, ap-southeast-5).
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
# RFC 7628's SASL extension key (`auth` is the token's own) and value (printable, no \x01).
_EXTENSION_KEY = re.compile(r"[A-Za-z]+")
_EXTENSION_VALUE = re.compile(r"[\x21-\x7E \t\r\n]+")
EXTENSIONS_FORM = "expected comma-separated key=value, e.g. logicalCluster=lkc-abc123"


def parse_sasl_extensions(value: str) -> dict[str, str]:
    """`key=value,key=value` → the OAUTHBEARER SASL extensions; ValueError naming the bad one."""
    out: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, val = item.strip().partition("=")
        if not sep or not _EXTENSION_KEY.fullmatch(key) or not _EXTENSION_VALUE.fullmatch(val):
            raise ValueError(
                f"{item.strip()!r} is not key=value (a key of letters); {EXTENSIONS_FORM}"
            )
        if key == "auth":
            raise ValueError(f"the extension key 'auth' is the token's own; {EXTENSIONS_FORM}")
        out[key] = val
    return out


def is_rest_catalog(uri: str) -> bool:
    """ICEBERG_CATALOG_URI names a REST catalog (an HTTP(S) URL), not an SQL one."""
    return uri.strip().lower().startswith(("http://", "https://"))


def _field(default: Any, description: str, example: str, **kw: Any) -> Any:
    return Field(default, description=description, examples=[example], **kw)


class Settings(BaseSettings):
    """Recorder settings. Variable names are those of the original Go service where it had one."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
        populate_by_name=True,
    )

    # --- Kafka -----------------------------------------------------------------------------
    KAFKA_BROKERS: Annotated[list[str], NoDecode] = _field(
        ["localhost:9092"],
        "Comma-separated bootstrap brokers (host:port).",
        "kafka-0:9092,kafka-1:9092",
    )
    KAFKA_GROUP_ID: str = _field(
        "data-recorder",
        "Consumer group; its committed offsets follow hot-path progress.",
        "data-recorder",
    )
    KAFKA_TOPICS: Annotated[list[str], NoDecode] = _field(
        ["market.tick", "market.orderbook"],
        "Comma-separated topics. A topic whose name contains `orderbook` holds order books, one "
        "containing `tick` holds ticks; `name:tick` / `name:orderbook` says so explicitly.",
        "market.tick,market.orderbook",
    )
    KAFKA_AUTO_OFFSET_RESET: Literal["earliest", "latest"] = _field(
        "earliest",
        "Where a sink without progress for a partition starts; that start is stored at once, so "
        "a restart resumes there, and the other sink keeps its own progress.",
        "earliest",
    )
    START_FROM: str = _field(
        "",
        "Where a sink without progress for a partition starts, instead of the reset policy (so "
        "only where KAFKA_AUTO_OFFSET_RESET would apply): `time:<RFC 3339>` starts at the "
        "partition's first record with a Kafka timestamp at or after that time (its log end "
        "when there is none), `offset:<N>` at offset N (kept within the log's bounds; a "
        "partition added to a topic this group already records starts at its beginning). "
        "Empty: the reset policy.",
        "time:2026-12-01T00:00:00Z",
    )
    PAUSED: bool = _field(
        False,
        "Pauses the data flow while the pod stays up (Strimzi's paused connector): the consumer "
        "keeps its group membership and partitions but fetches nothing, records nothing and "
        "moves no progress; `/ready` answers 503 with the part `paused`, and "
        "`datarecorder_paused` is 1 (the lag alerts leave a paused recorder out). The "
        "operator sets it for `spec.state: paused`.",
        "false",
    )
    ON_LOG_TRUNCATION: Literal["resume", "halt"] = _field(
        "resume",
        "When a partition's progress lies below its log start (retention or DeleteRecords removed "
        "records no sink had written): `resume` goes on at the log start and reports the lost "
        "range loudly (error log, datarecorder_records_lost_total); `halt` stops the partition "
        "until `datarecorder reset-progress`.",
        "halt",
    )
    KAFKA_SESSION_TIMEOUT_MS: int = _field(
        20_000,
        "Consumer group session timeout: a member silent this long (a GC pause, CPU throttling, "
        "a network blip) loses its partitions; the lake protocol keeps it from changing the lake.",
        "20000",
        ge=6_000,
        le=300_000,
    )
    KAFKA_SECURITY_PROTOCOL: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _field(
        "PLAINTEXT", "Kafka security protocol.", "SASL_SSL"
    )
    KAFKA_SASL_MECHANISM: Literal[
        "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"
    ] = _field(
        "PLAIN",
        "SASL mechanism when the protocol is SASL_*. `OAUTHBEARER`: a token from an OAuth 2.0 "
        "token endpoint (client credentials, the KAFKA_SASL_OAUTHBEARER_* variables); "
        "`AWS_MSK_IAM`: Amazon MSK's IAM login (OAUTHBEARER with a token signed by the pod's "
        "AWS credentials for KAFKA_SASL_AWS_REGION; needs SASL_SSL).",
        "SCRAM-SHA-512",
    )
    KAFKA_SASL_USERNAME: str | None = _field(None, "SASL user name (from a Secret).", "recorder")
    KAFKA_SASL_PASSWORD: SecretStr | None = _field(None, "SASL password (from a Secret).", "***")
    KAFKA_SASL_JAAS_CONFIG: SecretStr | None = _field(
        None,
        "A whole sasl.jaas.config line (from a Secret, e.g. a Strimzi KafkaUser's); its username "
        "and password are used where KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD are unset.",
        "***",
    )
    KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL: str = _field(
        "",
        "OAUTHBEARER: the OAuth 2.0 token endpoint the client-credentials grant is posted to "
        "(Kafka's sasl.oauthbearer.token.endpoint.url); an https:// (or http://) URL.",
        "https://login.example.com/oauth2/token",
    )
    KAFKA_SASL_OAUTHBEARER_CLIENT_ID: str = _field(
        "",
        "OAUTHBEARER: the OAuth client id (Kafka's sasl.oauthbearer.client.credentials.client.id).",
        "datarecorder",
    )
    KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET: SecretStr | None = _field(
        None,
        "OAUTHBEARER: the OAuth client secret (from a Secret; Kafka's "
        "sasl.oauthbearer.client.credentials.client.secret).",
        "***",
    )
    KAFKA_SASL_OAUTHBEARER_SCOPE: str = _field(
        "",
        "OAUTHBEARER: the scope asked for (Kafka's sasl.oauthbearer.scope); empty: none.",
        "kafka",
    )
    KAFKA_SASL_OAUTHBEARER_CLIENT_AUTH: Literal["basic", "form"] = _field(
        "basic",
        "OAUTHBEARER: how the client authenticates to the token endpoint: `basic` (an HTTP "
        "Basic header, as Kafka's own client does) or `form` (client_id and client_secret in "
        "the form body, for endpoints that take only that).",
        "form",
    )
    KAFKA_SASL_OAUTHBEARER_EXTENSIONS: str = _field(
        "",
        "OAUTHBEARER: SASL extensions sent with the token (RFC 7628; e.g. Confluent Cloud's "
        "logicalCluster and identityPoolId), as comma-separated key=value; empty: none.",
        "logicalCluster=lkc-abc123,identityPoolId=pool-xyz",
    )
    KAFKA_SASL_AWS_REGION: str = _field(
        "",
        "AWS_MSK_IAM: the AWS region of the MSK cluster, which the token is signed for; empty: "
        "the AWS_REGION variable's (set on EKS by the pod identity webhook).",
        "eu-west-1",
    )
    KAFKA_CLIENT_RACK: str = _field(
        "",
        "The rack (availability zone) of this recorder, sent with its fetches (client.rack): "
        "brokers with a replica selector (replica.selector.class=RackAwareReplicaSelector) "
        "then serve it from a replica in its own zone (fetch-from-follower, KIP-392) instead "
        "of the leader. Empty: none, every fetch goes to the leader.",
        "eu-west-1a",
        max_length=255,
    )
    KAFKA_SSL_CA_FILE: Path | None = _field(
        None, "CA bundle for TLS to Kafka.", "/etc/kafka-tls/ca.crt"
    )
    KAFKA_SSL_CERT_FILE: Path | None = _field(
        None, "Client certificate for mTLS.", "/etc/kafka-tls/tls.crt"
    )
    KAFKA_SSL_KEY_FILE: Path | None = _field(None, "Client key for mTLS.", "/etc/kafka-tls/tls.key")
    NUM_CONSUMERS: int = _field(
        1, "Kafka consumers (group members) in this process.", "1", ge=1, le=64
    )
    FETCH_MAX_RECORDS: int = _field(5000, "Records per getmany() call.", "5000", ge=1, le=1_000_000)
    DLQ_SUFFIX: str = _field(
        ".dlq", "Dead-letter topic = source topic + this suffix.", ".dlq", min_length=1
    )

    # --- TimescaleDB / PostgreSQL ----------------------------------------------------------
    TIMESCALEDB_HOST: str = _field("localhost", "Database host.", "timescaledb.db.svc")
    TIMESCALEDB_PORT: int = _field(5432, "Database port.", "5432", ge=1, le=65535)
    TIMESCALEDB_USER: str = _field("recorder", "Database user.", "recorder")
    TIMESCALEDB_PASSWORD: SecretStr = _field(
        SecretStr(""), "Database password (from a Secret).", "***"
    )
    TIMESCALEDB_DB: str = _field("marketdata", "Database name.", "marketdata")
    TIMESCALEDB_SSLMODE: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = (
        _field("prefer", "libpq-style sslmode for the database connection.", "require")
    )
    BATCH_SIZE: int = _field(
        1000, "Rows per partition at which the hot path flushes.", "1000", ge=1, le=1_000_000
    )
    BATCH_TIMEOUT_MS: int = _field(
        1000, "Longest time a row waits in the hot-path buffer.", "1000", ge=1, le=3_600_000
    )
    DB_WRITE_WORKERS: int = _field(
        4, "Parallel database writers (a partition always goes to the same one).", "4", ge=1, le=64
    )
    DB_WRITE_ENABLED: bool = _field(True, "Turns the hot path (database) on or off.", "true")
    MIGRATE_ON_START: bool = _field(True, "Apply migrations/ when `run` starts.", "true")

    # --- S3 / Parquet ----------------------------------------------------------------------
    S3_WRITE_ENABLED: bool = _field(True, "Turns the cold path (Parquet) on or off.", "true")
    S3_BUCKET: str = _field("market-data", "Bucket of the Parquet lake.", "market-data")
    S3_REGION: str = _field("us-east-1", "S3 region.", "ap-northeast-2")
    S3_ENDPOINT_URL: str | None = _field(
        None,
        "Endpoint of an S3-compatible store (MinIO, moto); unset for AWS.",
        "http://minio:9000",
    )
    S3_PREFIX: str = _field("market-data", "Key prefix of the lake.", "market-data")
    S3_BATCH_SIZE: int = _field(
        10000,
        "Rows per partition at which a Parquet file is written.",
        "10000",
        ge=1,
        le=10_000_000,
    )
    S3_BATCH_TIMEOUT_SEC: float = _field(
        60, "Longest time a row waits before its Parquet file is written.", "60", gt=0, le=86_400
    )
    S3_PART_SIZE_MB: int = _field(
        16, "Multipart upload part size; files above it are uploaded in parts.", "16", ge=5, le=512
    )
    LOCAL_LAKE_DIR: Path | None = _field(
        None,
        "Write the Parquet lake to this directory instead of S3 (runs without S3).",
        "./lake",
    )
    PARQUET_ORDERBOOK_LEVELS: Literal["typed", "json"] = _field(
        "typed",
        "Order book levels as list<struct<price,quantity>> (typed) or JSON strings (original layout).",
        "typed",
    )
    PARQUET_TIMESTAMP_UNIT: Literal["ns", "us"] = _field(
        "ns", "Parquet timestamp unit; `us` for Spark/Athena readers.", "ns"
    )
    PARQUET_ROW_GROUP_SIZE: int = _field(
        50_000,
        "Rows per Parquet row group (written as they fill).",
        "50000",
        ge=1000,
        le=10_000_000,
    )

    LAKE_FORMAT: Literal["parquet", "iceberg"] = _field(
        "parquet",
        "What the cold path writes: `parquet`, hive-partitioned Parquet files with progress "
        "objects beside them; `iceberg`, Parquet data files committed to the Iceberg tables "
        "ICEBERG_TICK_TABLE and ICEBERG_ORDERBOOK_TABLE of the catalog ICEBERG_CATALOG_URI, "
        "with the progress in each snapshot's summary (see docs/iceberg.md).",
        "iceberg",
    )

    # --- Iceberg (LAKE_FORMAT=iceberg) -----------------------------------------------------
    ICEBERG_CATALOG_URI: str = _field(
        "",
        "The Iceberg catalog. A REST catalog's base URL (`http(s)://...`, the part before "
        "`/v1/`; credentials in ICEBERG_CATALOG_CREDENTIAL or ICEBERG_CATALOG_TOKEN), or the "
        "SQLAlchemy URL of an SQL catalog's PostgreSQL database (the JDBC catalog's tables "
        "`iceberg_tables`, `iceberg_namespace_properties`, created when missing) without a "
        "password (ICEBERG_CATALOG_PASSWORD). Empty: an SQL catalog in the recorder's own "
        "database (TIMESCALEDB_HOST/PORT/USER/PASSWORD/DB).",
        "postgresql+psycopg2://iceberg@catalog-db:5432/iceberg",
    )
    ICEBERG_CATALOG_PASSWORD: SecretStr = _field(
        SecretStr(""),
        "Password of the SQL catalog's database (from a Secret); with an empty "
        "ICEBERG_CATALOG_URI TIMESCALEDB_PASSWORD is used.",
        "***",
    )
    ICEBERG_CATALOG_CREDENTIAL: SecretStr = _field(
        SecretStr(""),
        "REST catalog only (from a Secret): OAuth2 client credentials `client_id:client_secret`, "
        "exchanged for a token at ICEBERG_CATALOG_OAUTH2_SERVER_URI (default: the catalog's "
        "`v1/oauth/tokens`) and refreshed before it expires.",
        "***",
    )
    ICEBERG_CATALOG_TOKEN: SecretStr = _field(
        SecretStr(""),
        "REST catalog only (from a Secret): a bearer token sent as is (e.g. a Databricks "
        "personal access token for Unity Catalog). Set this or ICEBERG_CATALOG_CREDENTIAL.",
        "***",
    )
    ICEBERG_CATALOG_SCOPE: str = _field(
        "",
        "REST catalog with ICEBERG_CATALOG_CREDENTIAL: the OAuth2 scope asked for (Polaris: "
        "`PRINCIPAL_ROLE:ALL`). Empty: pyiceberg's default, `catalog`.",
        "PRINCIPAL_ROLE:ALL",
    )
    ICEBERG_CATALOG_OAUTH2_SERVER_URI: str = _field(
        "",
        "REST catalog with ICEBERG_CATALOG_CREDENTIAL: the OAuth2 token endpoint when it is not "
        "the catalog's own `<ICEBERG_CATALOG_URI>/v1/oauth/tokens` (an external identity "
        "provider).",
        "https://idp.example.com/oauth2/token",
    )
    ICEBERG_CATALOG_NAME: str = _field(
        "datarecorder",
        "The catalog's name (the `catalog_name` column of its tables): readers configure their "
        "catalog under this name to see the tables.",
        "datarecorder",
        min_length=1,
        max_length=255,
    )
    ICEBERG_WAREHOUSE: str = _field(
        "",
        "SQL catalog: where new tables put their data and metadata; empty: "
        "`s3://<S3_BUCKET>/<S3_PREFIX>` (or `file://<LOCAL_LAKE_DIR>` for a local lake). REST "
        "catalog: the `warehouse` asked of the catalog (Polaris and Unity: the catalog's name, "
        "Lakekeeper: the warehouse's name, others: a location); empty: none, the server's "
        "default.",
        "s3://market-data/iceberg",
    )
    ICEBERG_NAMESPACE: str = _field(
        "market_data", "Namespace of the recorder's tables.", "market_data", min_length=1
    )
    ICEBERG_TICK_TABLE: str = _field("tick", "Table of ticks.", "tick", min_length=1)
    ICEBERG_ORDERBOOK_TABLE: str = _field(
        "orderbook", "Table of order books.", "orderbook", min_length=1
    )
    ICEBERG_SYMBOL_BUCKETS: int = _field(
        0,
        "Tables the recorder creates are partitioned by bucket(N, symbol) as well as "
        "hour(timestamp), so a reader filtering on a symbol skips the other buckets' files; 0: "
        "by hour only. Tables that exist keep their partitioning.",
        "16",
        ge=0,
        le=1024,
    )

    # --- Process ---------------------------------------------------------------------------
    # A count limit well above S3_BATCH_SIZE x partitions (240,000 by default): at 100,000 both
    # sinks ran stop-and-go (the lake's open files filled the buffers, everything flushed at
    # once, the consumer waited). Memory is bounded by MAX_BUFFER_BYTES, which binds first for
    # anything larger than a tick.
    MAX_BUFFER_SIZE: int = _field(
        500_000,
        "Buffered records (all sinks) at which consumption pauses.",
        "500000",
        ge=1,
        le=100_000_000,
    )
    MAX_BUFFER_BYTES: int = _field(
        0,
        "Estimated decoded bytes buffered (all sinks) at which consumption pauses, whichever of "
        "it and MAX_BUFFER_SIZE comes first; 0 = derived: a quarter of the container's memory "
        "limit (cgroup `memory.max`), at most 1 GiB (the pod's /tmp size limit, where Parquet "
        "files spill), or 256 MiB without a limit.",
        "268435456",
        ge=0,
    )
    MAX_MESSAGE_BYTES: int = _field(
        1_048_576, "Largest accepted record value; larger ones are dead-lettered.", "1048576", ge=64
    )
    HTTP_PORT: int = _field(
        8080, "Port of /health, /ready and /metrics (0 = off).", "8080", ge=0, le=65535
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _field("INFO", "Log level.", "INFO")
    SHUTDOWN_TIMEOUT_SEC: float = _field(
        30,
        "Deadline from SIGTERM/SIGINT to the exit, in every state (start-up included): flush "
        "what can be flushed, commit, leave; the rest is replayed by the next owner.",
        "30",
        gt=0,
        le=3600,
    )
    RETRY_MAX_BACKOFF_SEC: float = _field(
        10, "Longest pause between retries of a failing store.", "10", gt=0, le=600
    )
    DB_RETENTION_DAYS: int = _field(
        0,
        "Days of rows (by event time) the database keeps; older day partitions (plain "
        "PostgreSQL) or chunks (TimescaleDB, by drop_chunks) are dropped by the recorder. "
        "0 keeps everything. Rollups are kept. In `timescaledb` mode 0 or at least 8 (the "
        "longest refresh policy window, 7 days, and a day).",
        "30",
        ge=0,
        le=100_000,
    )
    DB_RETENTION_INTERVAL_SEC: float = _field(
        3600, "Pause between two retention runs (the first runs at start).", "3600", gt=0, le=86_400
    )
    DB_COMPRESS_AFTER_DAYS: int = _field(
        0,
        "TimescaleDB (license `timescale`) only: compress chunks older than this many days, by "
        "a compression policy set at start. 0 leaves compression as it is. Ignored in the other "
        "modes.",
        "7",
        ge=0,
        le=100_000,
    )

    @field_validator("KAFKA_BROKERS", "KAFKA_TOPICS", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("KAFKA_BROKERS")
    @classmethod
    def _check_brokers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one host:port")
        for broker in value:
            host, _, port = broker.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port, got {broker!r}")
        return value

    @field_validator("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL")
    @classmethod
    def _check_token_endpoint(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                parsed = urlsplit(value)
            except ValueError:  # e.g. an unclosed [IPv6] literal
                parsed = urlsplit("")
            if parsed.scheme not in ("https", "http") or not parsed.hostname:
                raise ValueError(
                    f"{value!r} is not an http(s) URL; expected e.g. "
                    "https://login.example.com/oauth2/token"
                )
        return value

    @field_validator("KAFKA_SASL_OAUTHBEARER_EXTENSIONS")
    @classmethod
    def _check_extensions(cls, value: str) -> str:
        parse_sasl_extensions(value)  # raises a ValueError saying the expected form
        return value.strip()

    def sasl_extensions(self) -> dict[str, str]:
        """KAFKA_SASL_OAUTHBEARER_EXTENSIONS as the SASL extensions' key → value."""
        return parse_sasl_extensions(self.KAFKA_SASL_OAUTHBEARER_EXTENSIONS)

    @model_validator(mode="after")
    def _check_sasl(self) -> Settings:
        if not self.KAFKA_SECURITY_PROTOCOL.startswith("SASL_"):
            return self
        if self.KAFKA_SASL_MECHANISM == "OAUTHBEARER":
            missing = [
                name
                for name, value in (
                    (
                        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
                        self.KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL,
                    ),
                    ("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", self.KAFKA_SASL_OAUTHBEARER_CLIENT_ID),
                    (
                        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
                        self.KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET.get_secret_value()
                        if self.KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET
                        else "",
                    ),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    f"KAFKA_SASL_MECHANISM=OAUTHBEARER needs {', '.join(missing)} (the token "
                    "endpoint's URL, e.g. https://login.example.com/oauth2/token, and the "
                    "client id and secret of the client-credentials grant)"
                )
        if self.KAFKA_SASL_MECHANISM == "AWS_MSK_IAM":
            if self.KAFKA_SECURITY_PROTOCOL != "SASL_SSL":
                raise ValueError(
                    f"KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                    f"(got {self.KAFKA_SECURITY_PROTOCOL}; MSK's IAM listener is TLS only)"
                )
            region = self.KAFKA_SASL_AWS_REGION.strip() or os.environ.get("AWS_REGION", "").strip()
            if not AWS_REGION.fullmatch(region):
                got = f"{region!r} is not a region" if region else "neither is set"
                raise ValueError(
                    "KAFKA_SASL_MECHANISM=AWS_MSK_IAM needs the MSK cluster's region in "
                    f"KAFKA_SASL_AWS_REGION or AWS_REGION ({got}; expected e.g. eu-west-1)"
                )
            self.KAFKA_SASL_AWS_REGION = region
        return self

    @field_validator("START_FROM")
    @classmethod
    def _check_start_from(cls, value: str) -> str:
        parse_start_from(value)  # raises a ValueError saying the expected form
        return value.strip()

    def start_from(self) -> StartFrom | None:
        """START_FROM parsed (None: the reset policy applies)."""
        return parse_start_from(self.START_FROM)

    @field_validator("KAFKA_GROUP_ID", "S3_PREFIX")
    @classmethod
    def _check_key_name(cls, value: str) -> str:
        # Both end up in object keys and local paths (progress objects are scoped by group).
        expected = (
            "expected a name that becomes part of object keys and paths: no '..', no '/' at "
            "either end, no control characters"
        )
        if ".." in value:
            raise ValueError(f"{value!r} contains '..'; {expected}")
        if value.startswith("/") or value.endswith("/"):
            raise ValueError(f"{value!r} starts or ends with '/'; {expected}")
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise ValueError(f"{value!r} contains a control character; {expected}")
        return value

    @field_validator("ICEBERG_NAMESPACE", "ICEBERG_TICK_TABLE", "ICEBERG_ORDERBOOK_TABLE")
    @classmethod
    def _check_identifier(cls, value: str) -> str:
        # One level each: a dot would nest namespaces, and readers quote nothing else.
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError(
                f"{value!r}: expected an identifier (letters, digits and _, not starting with a "
                "digit), e.g. market_data"
            )
        return value

    @field_validator("ICEBERG_CATALOG_URI")
    @classmethod
    def _check_catalog_uri(cls, value: str) -> str:
        value = value.strip()
        if is_rest_catalog(value):
            parts = urlsplit(value)
            if parts.username is not None or parts.password is not None:
                raise ValueError(
                    "a REST catalog's URL carries no credentials: put them in "
                    "ICEBERG_CATALOG_CREDENTIAL (client_id:client_secret) or ICEBERG_CATALOG_TOKEN"
                )
            if not parts.hostname:
                raise ValueError("expected a REST catalog's URL, e.g. https://catalog:8181")
        return value

    @field_validator("ICEBERG_CATALOG_PASSWORD")
    @classmethod
    def _check_catalog_password(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        if value.get_secret_value() and is_rest_catalog(info.data.get("ICEBERG_CATALOG_URI", "")):
            raise ValueError(
                "is the SQL catalog's database password; a REST catalog (ICEBERG_CATALOG_URI "
                "http(s)://...) takes ICEBERG_CATALOG_CREDENTIAL or ICEBERG_CATALOG_TOKEN"
            )
        return value

    @field_validator("ICEBERG_CATALOG_CREDENTIAL", "ICEBERG_CATALOG_TOKEN")
    @classmethod
    def _check_catalog_secret(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        secret = value.get_secret_value()
        if not secret:
            return value
        if not is_rest_catalog(info.data.get("ICEBERG_CATALOG_URI", "")):
            raise ValueError(
                "is for a REST catalog (ICEBERG_CATALOG_URI=https://...); an SQL catalog's "
                "database takes ICEBERG_CATALOG_PASSWORD"
            )
        if info.field_name == "ICEBERG_CATALOG_CREDENTIAL":
            client_id, colon, client_secret = secret.partition(":")
            if not colon or not client_id.strip() or not client_secret.strip():
                raise ValueError(
                    "expected client_id:client_secret (the OAuth2 client credentials, both "
                    "non-empty, separated by ':')"
                )
        else:
            if info.data.get("ICEBERG_CATALOG_CREDENTIAL", SecretStr("")).get_secret_value():
                raise ValueError(
                    "set ICEBERG_CATALOG_CREDENTIAL (client credentials) or ICEBERG_CATALOG_TOKEN "
                    "(a bearer token), not both"
                )
            if any(ch.isspace() for ch in secret):  # "Bearer <token>" pasted whole, or a newline
                raise ValueError("expected the bearer token alone (no 'Bearer ' prefix, no spaces)")
        return value

    @field_validator("KAFKA_TOPICS")
    @classmethod
    def _check_topics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one topic")
        for topic in value:
            topic_kind(topic)  # raises a ValueError naming the topic
        return value

    def topics(self) -> dict[str, TopicKind]:
        """Topic name → the kind of record it carries."""
        out: dict[str, TopicKind] = {}
        for item in self.KAFKA_TOPICS:
            name, kind = split_topic(item)
            out[name] = kind
        return out

    def dlq_topic(self, topic: str) -> str:
        return topic + self.DLQ_SUFFIX

    def db_dsn_kwargs(self) -> dict[str, Any]:
        ssl: str | bool = self.TIMESCALEDB_SSLMODE
        return {
            "host": self.TIMESCALEDB_HOST,
            "port": self.TIMESCALEDB_PORT,
            "user": self.TIMESCALEDB_USER,
            "password": self.TIMESCALEDB_PASSWORD.get_secret_value() or None,
            "database": self.TIMESCALEDB_DB,
            "ssl": ssl,
        }

    def safe_dump(self) -> dict[str, Any]:
        """Settings for logs: secrets masked."""
        out: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                out[name] = "***" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


_EXPECTS: dict[str, str] = {
    "int_parsing": "an integer",
    "float_parsing": "a number",
    "bool_parsing": "true or false",
    "literal_error": "one of the listed values",
}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and `.env`); raise ConfigError on a bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            if not err["loc"]:  # a check across variables: its message names them
                lines.append(err["msg"].removeprefix("Value error, "))
                continue
            name = str(err["loc"][0])
            field = Settings.model_fields.get(name)
            example = field.examples[0] if field and field.examples else ""
            got = os.environ.get(name, err.get("input"))
            if field is not None and field.annotation is SecretStr:
                got = "***"  # a secret's value never reaches a log
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(
                f"{name}={got!r}: {msg}" + (f" (example: {name}={example})" if example else "")
            )
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
