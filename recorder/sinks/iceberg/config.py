"""The Iceberg store's own settings, read from `Settings` once (pure).

Owns `IcebergConfig`: the catalog (name; a REST catalog's URL with its OAuth2 client credentials
or bearer token, or an SQL catalog's SQLAlchemy URL with its password; the FileIO's
properties), the warehouse, the namespace and a table per record kind, the consumer group that
owns the progress, the batch size and age, the retry cap and the order books' level layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from recorder.runtime.settings import Settings, TopicKind, is_rest_catalog

SINK = "iceberg"
# The catalog database answers within this or counts as down (psycopg2 would wait minutes).
CONNECT_TIMEOUT_SEC = 10
# The server ends a catalog statement (or a wait for a row lock) after this; TCP keepalives
# find a peer that is gone. A peer that still acknowledges but never answers (a frozen server)
# is bounded on the client side: recorder/sinks/iceberg/wait.py.
STATEMENT_TIMEOUT_MS = 30_000
LIBPQ_PARAMS = (
    f"connect_timeout={CONNECT_TIMEOUT_SEC}"
    "&keepalives=1&keepalives_idle=10&keepalives_interval=5&keepalives_count=3"
    f"&options=-c%20statement_timeout%3D{STATEMENT_TIMEOUT_MS}"
)
CatalogKind = Literal["sql", "rest"]


@dataclass(frozen=True, slots=True)
class IcebergConfig:
    catalog: str  # ICEBERG_CATALOG_NAME
    uri: str = field(repr=False)  # holds the SQL catalog's password: never logged
    warehouse: str  # REST: the `warehouse` asked of the catalog, "" for none
    namespace: str
    tables: dict[TopicKind, str]
    group: str  # KAFKA_GROUP_ID: the progress in the snapshots belongs to it
    batch_rows: int  # S3_BATCH_SIZE
    batch_age_sec: float  # S3_BATCH_TIMEOUT_SEC
    retry_max_backoff_sec: float
    levels: Literal["typed", "json"]  # PARQUET_ORDERBOOK_LEVELS
    symbol_buckets: int  # ICEBERG_SYMBOL_BUCKETS: 0, partitioned by hour only
    io: dict[str, str]  # pyiceberg FileIO properties (S3 endpoint, region)
    kind: CatalogKind = "sql"
    # The REST catalog's authentication properties (credential or token, scope, token
    # endpoint): secrets, never logged.
    auth: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> IcebergConfig:
        rest = is_rest_catalog(settings.ICEBERG_CATALOG_URI)
        return cls(
            catalog=settings.ICEBERG_CATALOG_NAME,
            uri=settings.ICEBERG_CATALOG_URI if rest else catalog_uri(settings),
            warehouse=settings.ICEBERG_WAREHOUSE if rest else warehouse(settings),
            namespace=settings.ICEBERG_NAMESPACE,
            tables={
                TopicKind.TICK: settings.ICEBERG_TICK_TABLE,
                TopicKind.ORDERBOOK: settings.ICEBERG_ORDERBOOK_TABLE,
            },
            group=settings.KAFKA_GROUP_ID,
            batch_rows=settings.S3_BATCH_SIZE,
            batch_age_sec=settings.S3_BATCH_TIMEOUT_SEC,
            retry_max_backoff_sec=settings.RETRY_MAX_BACKOFF_SEC,
            levels=settings.PARQUET_ORDERBOOK_LEVELS,
            symbol_buckets=settings.ICEBERG_SYMBOL_BUCKETS,
            io=file_io(settings),
            kind="rest" if rest else "sql",
            auth=rest_auth(settings) if rest else {},
        )

    def table(self, kind: TopicKind) -> str:
        """The table's identifier, `namespace.name`."""
        return f"{self.namespace}.{self.tables[kind]}"

    def catalog_properties(self) -> dict[str, str]:
        """The properties of pyiceberg's SqlCatalog or RestCatalog (the FileIO's among them)."""
        if self.kind == "rest":
            props = {"uri": self.uri, **self.auth, **self.io}
            if self.warehouse:
                props["warehouse"] = self.warehouse
            return props
        return {"uri": self.uri, "warehouse": self.warehouse, "pool_pre_ping": "true", **self.io}

    def where(self) -> str:
        """The catalog for logs (no secret)."""
        if self.kind == "rest":
            return f"REST catalog {self.uri}" + (
                f" warehouse {self.warehouse}" if self.warehouse else ""
            )
        return f"catalog {self.catalog!r} at {self.warehouse}"


def catalog_uri(settings: Settings) -> str:
    """ICEBERG_CATALOG_URI with ICEBERG_CATALOG_PASSWORD put in, or the recorder's database."""
    if not settings.ICEBERG_CATALOG_URI:
        db = settings.db_dsn_kwargs()
        password = db["password"] or ""
        auth = quote(db["user"], safe="") + (f":{quote(password, safe='')}" if password else "")
        base = f"postgresql+psycopg2://{auth}@{db['host']}:{db['port']}/{quote(db['database'])}"
        return _with_timeout(base)
    uri = settings.ICEBERG_CATALOG_URI
    parts = urlsplit(uri)
    password = settings.ICEBERG_CATALOG_PASSWORD.get_secret_value()
    if password and parts.username is not None and parts.password is None:
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
        uri = urlunsplit(parts._replace(netloc=netloc))
    return _with_timeout(uri)


def rest_auth(settings: Settings) -> dict[str, str]:
    """pyiceberg RestCatalog's authentication properties from the settings (validated there:
    a credential is `client_id:client_secret`, a token is alone)."""
    props: dict[str, str] = {}
    credential = settings.ICEBERG_CATALOG_CREDENTIAL.get_secret_value()
    token = settings.ICEBERG_CATALOG_TOKEN.get_secret_value()
    if credential:
        props["credential"] = credential
        # pyiceberg's default endpoint, said explicitly (it warns when left implicit).
        props["oauth2-server-uri"] = settings.ICEBERG_CATALOG_OAUTH2_SERVER_URI or (
            settings.ICEBERG_CATALOG_URI.rstrip("/") + "/v1/oauth/tokens"
        )
        if settings.ICEBERG_CATALOG_SCOPE:
            props["scope"] = settings.ICEBERG_CATALOG_SCOPE
    elif token:
        props["token"] = token
    return props


def _with_timeout(uri: str) -> str:
    if "connect_timeout=" in uri or not uri.startswith("postgresql"):
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{LIBPQ_PARAMS}"


def warehouse(settings: Settings) -> str:
    if settings.ICEBERG_WAREHOUSE:
        return settings.ICEBERG_WAREHOUSE.rstrip("/")
    if settings.LOCAL_LAKE_DIR is not None:
        return f"file://{settings.LOCAL_LAKE_DIR.resolve()}"
    prefix = settings.S3_PREFIX.strip("/")
    return f"s3://{settings.S3_BUCKET}" + (f"/{prefix}" if prefix else "")


def file_io(settings: Settings) -> dict[str, str]:
    """pyarrow's FileIO against S3_ENDPOINT_URL / S3_REGION; credentials come from the
    environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the pod's role), as for the lake."""
    props = {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO", "s3.region": settings.S3_REGION}
    if settings.S3_ENDPOINT_URL:
        props["s3.endpoint"] = settings.S3_ENDPOINT_URL
    return props
