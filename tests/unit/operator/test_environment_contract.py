"""The recorder's environment contract: what the operator renders, `Settings` accepts.

Bounds as well as defaults, read from the CRD's schema: every variable the operator sets is a
`Settings` field; every integer the CRD allows at its minimum and maximum reaches the recorder
as that value; the CRD's defaults are the recorder's own; and specs generated within the schema
(patterns, enums, bounds) render an environment `Settings` takes.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

import pytest
from datarecorder_operator import environment
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.parsing_kafka import topic_kind as operator_topic_kind
from datarecorder_operator.spec import RecorderSpec, SpecError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.core.kinds import topic_kind as recorder_topic_kind
from recorder.runtime.settings import Settings
from tests.unit.operator.helpers import cr_schema

SPEC_SCHEMA: dict[str, Any] = cr_schema()["properties"]["spec"]
# Variables the recorder reads that are not `Settings` fields, and who reads them.
NOT_SETTINGS = {
    "PGSSLROOTCERT": "libpq's CA file variable, read by asyncpg",
    "AWS_ACCESS_KEY_ID": "the AWS SDK's credentials (botocore reads them)",
    "AWS_SECRET_ACCESS_KEY": "the AWS SDK's credentials (botocore reads them)",
}
# Settings the spec deliberately decides differently from the recorder's own default (the
# operator always renders them, so the recorder's default never applies).
DIFFERENT_ON_PURPOSE = {
    "KAFKA_GROUP_ID": "one group per DataRecorder, datarecorder.<namespace>.<name>",
    "S3_WRITE_ENABLED": "the cold path needs a bucket, which has no default",
    "S3_BUCKET": "no default bucket: required when spec.s3.enabled",
}
IMAGE = "ghcr.io/example/datarecorder:0.1.0"
# A spec that renders every section the environment has: both sinks, the database CA.
BASE: dict[str, Any] = {
    "image": IMAGE,
    "kafka": {"brokers": ["kafka:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}, "caSecret": {"name": "ca"}},
    "s3": {"enabled": True, "bucket": "lake"},
}
# Objects whose presence means something (a protocol, credentials, a choice): not walked for
# defaults or bounds here; the generated specs below cover them.
NOT_WALKED = ("kafka.sasl", "kafka.tls", "kafka.startFrom", "kafka.rack", "serviceAccount")
SECRET_VALUE = "not-a-real-secret"
# A REST catalog's client credentials have a form of their own: client_id:client_secret.
CREDENTIAL_VALUE = "not-a-real-client:secret"
ZONE = "eu-west-1a"  # the pod's copy of its node's zone label


def recorder_environment(spec: RecorderSpec) -> dict[str, str]:
    """The recorder container's environment as the kubelet would give it: the ConfigMap, then
    `env` (Secrets read as a stand-in value, the zone label as a zone)."""
    env = dict(environment.config_data(spec))
    for entry in environment.secret_env(spec) + environment.rack_env(spec):
        source = entry.get("valueFrom") or {}
        if "secretKeyRef" in source:
            credential = entry["name"] == "ICEBERG_CATALOG_CREDENTIAL"
            env[entry["name"]] = CREDENTIAL_VALUE if credential else SECRET_VALUE
        elif "fieldRef" in source:
            env[entry["name"]] = ZONE
        else:
            env[entry["name"]] = entry["value"]
    return env


def recorder_settings(env: Mapping[str, str]) -> Settings:
    """`Settings` as the recorder builds them in its pod: from this environment alone."""
    # A NUL byte cannot be in an environment; checked first, since patch.dict would fail half-way
    # through and leave os.environ cleared for the tests after this one.
    if nul := sorted(k for k, v in env.items() if "\x00" in k + v):
        raise AssertionError(f"{nul}: a NUL byte cannot reach a pod's environment")
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)


def leaves(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path under spec, schema) of every scalar field, objects of NOT_WALKED left out."""
    for key, sub in (node.get("properties") or {}).items():
        where = f"{path}.{key}" if path else key
        if where in NOT_WALKED:
            continue
        if sub.get("type") == "object":
            yield from leaves(sub, where)
        else:
            yield where, sub


def with_value(path: str, value: Any) -> dict[str, Any]:
    """BASE with the field at `path` set, and the fields that must agree with it moved along."""
    spec = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    batching, auto = spec.get("batching", {}), spec.get("autoscaling", {})
    if path == "batching.batchSize":  # a buffer holds one batch at least
        batching["maxBufferSize"] = max(value, 500_000)
    if path == "batching.maxBufferSize":
        batching["batchSize"] = max(1, min(value, 1000))
    if path == "autoscaling.minReplicas":
        auto["maxReplicas"] = max(value, 6)
    if path == "autoscaling.maxReplicas":
        auto["minReplicas"] = 1
    if path.startswith("autoscaling.fallback."):
        auto["fallback"].setdefault("replicas", 1)
    if path.startswith("s3.iceberg."):  # the tables' settings apply to an Iceberg lake
        spec["s3"].update(enabled=True, format="iceberg")
    return spec


def rendered(spec: Mapping[str, Any]) -> dict[str, str]:
    return recorder_environment(parse_spec("rec", "md", spec))


def as_env(value: Any) -> str:
    """A spec value as the environment writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def variables_of(path: str, schema: Mapping[str, Any]) -> set[str]:
    """The variables the field at `path` reaches: those that carry its value, whatever it is."""
    if schema.get("type") == "integer":
        values: list[Any] = [schema.get("minimum", 0), schema.get("maximum", 2**31)]
    elif schema.get("type") == "boolean":
        values = [True, False]
    elif "enum" in schema:
        values = list(schema["enum"])
    else:
        return set()
    if "default" in schema:
        values.append(schema["default"])
    envs = []
    for value in values:
        try:
            envs.append((value, rendered(with_value(path, value))))
        except SpecError:
            continue
    names: set[str] = set().union(*(env for _, env in envs))
    return {
        name
        for name in names
        if len(envs) > 1 and all(env.get(name) == as_env(value) for value, env in envs)
    }


INTEGER_FIELDS = [
    (path, schema) for path, schema in leaves(SPEC_SCHEMA) if schema.get("type") == "integer"
]
DEFAULTED_FIELDS = [(path, schema) for path, schema in leaves(SPEC_SCHEMA) if "default" in schema]


ICEBERG = {
    "format": "iceberg",
    "iceberg": {
        "catalogURI": "postgresql+psycopg2://iceberg@catalog-db:5432/iceberg",
        "catalogPasswordSecret": {"name": "catalog"},
        "catalogName": "lake",
        "warehouse": "s3://lake/warehouse",
        "namespace": "md",
        "tickTable": "ticks",
        "orderbookTable": "books",
        "symbolBuckets": 16,
    },
}


def test_an_iceberg_lake_reaches_the_recorder_with_its_password_from_the_secret() -> None:
    spec = {**BASE, "s3": {**BASE["s3"], **ICEBERG}}
    env = rendered(spec)
    got = recorder_settings(env)
    assert (got.LAKE_FORMAT, got.ICEBERG_CATALOG_URI, got.ICEBERG_CATALOG_NAME) == (
        "iceberg",
        "postgresql+psycopg2://iceberg@catalog-db:5432/iceberg",
        "lake",
    )
    assert (got.ICEBERG_WAREHOUSE, got.ICEBERG_NAMESPACE) == ("s3://lake/warehouse", "md")
    assert (got.ICEBERG_TICK_TABLE, got.ICEBERG_ORDERBOOK_TABLE) == ("ticks", "books")
    assert got.ICEBERG_SYMBOL_BUCKETS == 16
    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in environment.secret_env(parse_spec("rec", "md", spec))
        if "valueFrom" in e
    }
    assert secret_refs["ICEBERG_CATALOG_PASSWORD"] == {"name": "catalog", "key": "password"}
    # A Parquet lake's environment does not change (no restart of existing recorders).
    assert "LAKE_FORMAT" not in rendered({**BASE, "s3": {**BASE["s3"], "format": "parquet"}})


def test_a_catalog_uri_with_a_password_is_refused() -> None:
    uri = "postgresql+psycopg2://iceberg:secret@catalog-db/iceberg"
    spec = {**BASE, "s3": {**BASE["s3"], "format": "iceberg", "iceberg": {"catalogURI": uri}}}
    with pytest.raises(SpecError, match="catalogPasswordSecret"):
        parse_spec("rec", "md", spec)


REST_ICEBERG = {
    "format": "iceberg",
    "iceberg": {
        "catalogURI": "https://polaris.example.com/api/catalog",
        "catalogCredentialSecret": {"name": "polaris"},
        "warehouse": "market",
    },
}


def test_a_rest_catalog_reaches_the_recorder_with_its_credential_from_the_secret() -> None:
    spec = {**BASE, "s3": {**BASE["s3"], **REST_ICEBERG}}
    env = rendered(spec)
    assert "ICEBERG_CATALOG_CREDENTIAL" not in environment.config_data(
        parse_spec("rec", "md", spec)
    )
    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in environment.secret_env(parse_spec("rec", "md", spec))
        if "valueFrom" in e
    }
    assert secret_refs["ICEBERG_CATALOG_CREDENTIAL"] == {"name": "polaris", "key": "credential"}
    assert "ICEBERG_CATALOG_PASSWORD" not in secret_refs
    # The recorder takes what the operator renders (a stand-in for the Secret's value).
    got = recorder_settings(env)
    assert (got.ICEBERG_CATALOG_URI, got.ICEBERG_WAREHOUSE) == (
        "https://polaris.example.com/api/catalog",
        "market",
    )
    assert got.ICEBERG_CATALOG_CREDENTIAL.get_secret_value() == CREDENTIAL_VALUE


@pytest.mark.parametrize(
    ("iceberg", "says"),
    [
        ({"catalogURI": "https://id:secret@polaris/api/catalog"}, "catalogCredentialSecret"),
        ({"catalogURI": "https://token@polaris/api/catalog"}, "catalogCredentialSecret"),
        (
            {"catalogURI": "postgresql://ice@db/cat", "catalogCredentialSecret": {"name": "c"}},
            "set spec.s3.iceberg.catalogURI to its http",
        ),
        ({"catalogCredentialSecret": {"name": "c"}}, "is for a REST catalog"),
        (
            {"catalogURI": "https://polaris/api", "catalogPasswordSecret": {"name": "c"}},
            "takes spec.s3.iceberg.catalogCredentialSecret",
        ),
        ({"warehouse": "market"}, "an SQL catalog's warehouse is an s3:// location"),
    ],
)
def test_a_rest_catalog_spec_that_cannot_work_is_refused(
    iceberg: dict[str, object], says: str
) -> None:
    spec = {**BASE, "s3": {**BASE["s3"], "format": "iceberg", "iceberg": iceberg}}
    with pytest.raises(SpecError, match=re.escape(says)):
        parse_spec("rec", "md", spec)


def test_every_variable_the_operator_renders_is_a_settings_field() -> None:
    rich = {
        **BASE,
        "kafka": {
            "brokers": ["kafka:9093"],
            "securityProtocol": "SASL_SSL",
            "sasl": {"secretName": "user", "jaasConfigKey": "sasl.jaas.config"},
            "tls": {"secretName": "ca", "certKey": "tls.crt", "keyKey": "tls.key"},
            "startFrom": {"time": "2026-12-01T00:00:00Z"},
            "rack": {"topologyKey": "topology.kubernetes.io/zone"},
        },
        "s3": {
            **BASE["s3"],
            "endpointURL": "http://minio:9000",
            "credentialsSecret": {"name": "s3"},
            **ICEBERG,
        },
        "state": "paused",
    }
    env = rendered(rich) | rendered({**BASE, "kafka": {**BASE["kafka"], "rack": {"id": ZONE}}})
    unknown = set(env) - set(Settings.model_fields) - set(NOT_SETTINGS)
    assert not unknown, f"rendered but not a recorder setting: {sorted(unknown)}"
    assert not set(NOT_SETTINGS) & set(Settings.model_fields), "now a setting: drop it here"
    recorder_settings(env)


@pytest.mark.parametrize(("path", "schema"), INTEGER_FIELDS, ids=[p for p, _ in INTEGER_FIELDS])
def test_every_integer_the_crd_allows_reaches_the_recorder_as_is(
    path: str, schema: dict[str, Any]
) -> None:
    lo, hi = schema["minimum"], schema.get("maximum")
    variables = variables_of(path, schema) & set(Settings.model_fields)
    operator_only = path == "replicas" or path.startswith("autoscaling.")
    assert bool(variables) != operator_only, f"{path} reaches the recorder as {variables}"
    for value in (lo, hi) if hi is not None else (lo,):
        env = rendered(with_value(path, value))  # the operator takes it (no SpecError)
        got = recorder_settings(env)
        for name in variables:
            assert getattr(got, name) == value, (path, name, env[name])


@pytest.mark.parametrize(("path", "schema"), INTEGER_FIELDS, ids=[p for p, _ in INTEGER_FIELDS])
def test_the_operator_refuses_integers_beyond_the_crds_bounds(
    path: str, schema: dict[str, Any]
) -> None:
    # An API server without the schema (an emulator, a bypassed webhook) leaves it to parse_spec.
    beyond = [schema["minimum"] - 1]
    if "maximum" in schema:
        beyond.append(schema["maximum"] + 1)
    for value in beyond:
        with pytest.raises(SpecError, match=path.rsplit(".", 1)[-1]):
            parse_spec("rec", "md", with_value(path, value))


def test_the_crds_defaults_are_the_recorders_defaults() -> None:
    mapped: dict[str, set[str]] = {}
    for path, schema in DEFAULTED_FIELDS:
        variables = variables_of(path, schema) & set(Settings.model_fields)
        variables -= set(DIFFERENT_ON_PURPOSE)
        if not variables:
            continue
        mapped[path] = variables
        got = recorder_settings(rendered(with_value(path, schema["default"])))
        for name in variables:
            default = Settings.model_fields[name].default
            assert getattr(got, name) == default, (path, name, schema["default"], default)
    # The walk found the settings it should: batching, the database and the lake at least.
    assert mapped["batching.batchSize"] == {"BATCH_SIZE"}
    assert mapped["s3.batchTimeoutSeconds"] == {"S3_BATCH_TIMEOUT_SEC"}
    assert mapped["timescaledb.port"] == {"TIMESCALEDB_PORT"}
    assert len(mapped) >= 15, sorted(mapped)


def test_a_spec_that_sets_nothing_renders_the_recorders_defaults() -> None:
    # Strings, lists and the operator's constants too (HTTP_PORT), which the walk above leaves.
    given = {"KAFKA_BROKERS", "TIMESCALEDB_HOST", "S3_BUCKET"}  # BASE sets them
    env = dict(environment.config_data(parse_spec("rec", "md", BASE)))  # no Secrets
    got = recorder_settings(env)
    differ = {
        name: (env[name], Settings.model_fields[name].default)
        for name in set(env) & set(Settings.model_fields) - given - set(DIFFERENT_ON_PURPOSE)
        if getattr(got, name) != Settings.model_fields[name].default
    }
    assert not differ, f"the operator's defaults differ from the recorder's: {differ}"


# --- specs generated within the CRD's schema -----------------------------------------------


def _no_surrogates(text: str) -> bool:
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def strings(schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
    """Strings the schema allows: its enum, else its pattern, within its lengths."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    lo, hi = schema.get("minLength", 0), schema.get("maxLength", 64)
    if "pattern" in schema:
        base = st.from_regex(schema["pattern"], fullmatch=True)
        return base.filter(lambda s: lo <= len(s) <= hi and _no_surrogates(s))
    # NUL cannot be in a process's environment (nor, then, in a container's).
    chars = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(chars, min_size=max(lo, 1), max_size=min(hi, 64))


def scalar(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", 0), schema.get("maximum", 2**63 - 1))
    if kind == "boolean":
        return st.booleans()
    return strings(schema)


@st.composite
def section(draw: st.DrawFn, schema: Mapping[str, Any], skip: tuple[str, ...] = ()) -> Any:
    """An object of the schema: its required fields, and each other scalar field or not."""
    out: dict[str, Any] = {}
    required = set(schema.get("required") or ())
    for key, sub in (schema.get("properties") or {}).items():
        if key in skip or not (key in required or draw(st.booleans())):
            continue
        out[key] = draw(section(sub) if sub.get("type") == "object" else scalar(sub))
    return out


def _prop(*path: str) -> dict[str, Any]:
    node = SPEC_SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def _valid_broker(broker: str) -> bool:
    # The pattern lets a port up to 99999 through; parse_spec refuses above 65535 (and 0).
    return 0 < int(broker.rpartition(":")[2]) < 65536


@st.composite
def kafka(draw: st.DrawFn) -> dict[str, Any]:
    brokers = st.lists(strings(_prop("kafka", "brokers")["items"]).filter(_valid_broker))
    # A topic the CRD's rule lets through: its name holds `tick` or `orderbook`, or it ends in
    # `:tick` / `:orderbook` (the pattern's name part, then one of those).
    names = strings(_prop("kafka", "topics")["items"]).map(lambda t: t.partition(":")[0][:200])
    topic = st.tuples(names, st.sampled_from([*KINDS, *(f":{k}" for k in KINDS)])).map("".join)
    out: dict[str, Any] = {
        "brokers": draw(brokers.filter(bool).map(lambda b: sorted(set(b))[:32])),
        "topics": draw(st.lists(topic, min_size=1, max_size=4, unique=True)),
    }
    if draw(st.booleans()):
        out["groupId"] = draw(strings(_prop("kafka", "groupId")).filter(lambda g: ".." not in g))
    protocol = draw(st.sampled_from(_prop("kafka", "securityProtocol")["enum"]))
    out["securityProtocol"] = protocol
    if protocol.startswith("SASL_"):
        skip = ("allowPlaintextPassword", "oauthbearer", "awsRegion")
        sasl = draw(section(_prop("kafka", "sasl"), skip=skip))
        mechanism = sasl.get("mechanism", "SCRAM-SHA-512")
        if mechanism == "OAUTHBEARER":
            oauth = _prop("kafka", "sasl", "oauthbearer")
            sasl["oauthbearer"] = {
                "tokenEndpointURL": draw(strings(oauth["properties"]["tokenEndpointURL"])),
                "clientId": draw(strings(oauth["properties"]["clientId"])),
                "clientSecretSecret": {"name": "oauth-client", "key": "secret"},
            }
            if draw(st.booleans()):
                sasl["oauthbearer"]["scope"] = draw(strings(oauth["properties"]["scope"]))
        elif mechanism == "AWS_MSK_IAM":
            sasl["awsRegion"] = draw(strings(_prop("kafka", "sasl", "awsRegion")))
            protocol = out["securityProtocol"] = "SASL_SSL"  # a CEL rule: TLS only
        else:
            sasl["secretName"] = "kafka-user"
        if "jaasConfigKey" in sasl:
            sasl.pop("username", None)
        if protocol == "SASL_PLAINTEXT" and mechanism in ("PLAIN", "OAUTHBEARER"):
            sasl["allowPlaintextPassword"] = True
        out["sasl"] = sasl
    if protocol in ("SSL", "SASL_SSL") and draw(st.booleans()):
        tls: dict[str, Any] = {"secretName": "kafka-ca"}
        if draw(st.booleans()):
            tls |= {"certKey": "user.crt", "keyKey": "user.key"}
        out["tls"] = tls
    start = draw(st.sampled_from(("none", "time", "offset")))
    if start == "time":
        # A real date-time within the pattern (see the startFrom gap below); the pattern's forms:
        # `T`, `t` or a space, a fraction or none, `Z`, `z` or an offset.
        when = draw(st.datetimes(datetime.datetime(1971, 1, 1), datetime.datetime(9998, 1, 1)))
        sep, zone = draw(st.sampled_from("Tt ")), draw(st.sampled_from(("Z", "z", "+09:00")))
        fraction = draw(st.sampled_from(("", ".5", ".123456789")))
        out["startFrom"] = {"time": when.strftime(f"%Y-%m-%d{sep}%H:%M:%S{fraction}{zone}")}
    elif start == "offset":
        out["startFrom"] = {"offset": draw(scalar(_prop("kafka", "startFrom", "offset")))}
    rack = draw(st.sampled_from(("none", "id", "topologyKey")))
    if rack != "none":
        out["rack"] = {rack: draw(strings(_prop("kafka", "rack", rack)))}
    return out


KINDS = ("tick", "orderbook")


def iceberg_cel(iceberg: dict[str, Any]) -> None:
    """Drop what the CRD's CEL rules on spec.s3.iceberg refuse (the patterns cannot say it)."""
    uri = iceberg.get("catalogURI", "")
    rest = re.match(r"https?://", uri) is not None
    if re.match(r"https?://[^/]*@", uri):
        del iceberg["catalogURI"]
        rest = False
    if not rest:
        iceberg.pop("catalogCredentialSecret", None)
        if not re.match(r"s3a?://", iceberg.get("warehouse", "s3://")):
            del iceberg["warehouse"]
    else:
        iceberg.pop("catalogPasswordSecret", None)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    timescaledb = draw(section(_prop("timescaledb"), skip=("caSecret", "passwordSecret")))
    timescaledb |= {"host": draw(strings(_prop("timescaledb", "host")))}
    timescaledb["passwordSecret"] = {"name": "tsdb"}
    if draw(st.booleans()):
        timescaledb["caSecret"] = {"name": "db-ca"}
    s3 = draw(section(_prop("s3"), skip=("credentialsSecret",)))
    if s3.get("enabled"):
        s3["bucket"] = draw(strings(_prop("s3", "bucket")))
    if ".." in s3.get("prefix", ""):
        del s3["prefix"]  # a CEL rule refuses it
    iceberg_cel(s3.get("iceberg") or {})
    batching = draw(section(_prop("batching")))
    if batching.get("maxBufferSize", 500_000) < batching.get("batchSize", 1000):
        batching["maxBufferSize"] = batching.get("batchSize", 1000)
    spec: dict[str, Any] = {
        "image": IMAGE,
        "kafka": draw(kafka()),
        "timescaledb": timescaledb,
        "s3": s3,
        "batching": batching,
        "autoscaling": {
            "offsetResetPolicy": draw(strings(_prop("autoscaling", "offsetResetPolicy")))
        },
    }
    for key in ("logLevel", "shutdownTimeoutSeconds", "state"):
        if draw(st.booleans()):
            spec[key] = draw(scalar(_prop(key)))
    return spec


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_every_spec_within_the_crd_renders_an_environment_the_recorder_takes(
    spec: dict[str, Any],
) -> None:
    parsed = parse_spec("rec", "md", spec)
    env = recorder_environment(parsed)
    got = recorder_settings(env)
    assert parsed.batching.batch_size == got.BATCH_SIZE
    assert parsed.batching.max_buffer_size == got.MAX_BUFFER_SIZE
    assert parsed.timescaledb.write_workers == got.DB_WRITE_WORKERS
    assert list(parsed.kafka.topics) == got.KAFKA_TOPICS
    assert got.S3_WRITE_ENABLED is parsed.s3.enabled
    if parsed.s3.enabled:
        assert parsed.s3.batch_size == got.S3_BATCH_SIZE
        assert parsed.s3.batch_timeout_sec == got.S3_BATCH_TIMEOUT_SEC
    assert set(env) <= set(Settings.model_fields) | set(NOT_SETTINGS)


# Specs the recorder refuses at start: the operator refuses them too, naming the field (the
# CRD refuses the first as well: examples/invalid/topic-of-no-kind.yaml).
GAPS = [
    pytest.param({"topics": ["trades"]}, "trades", id="topic-of-no-kind"),
    pytest.param({"topics": ["trades:quote"]}, "trades", id="topic-of-unknown-kind"),
    pytest.param(
        {"startFrom": {"time": "2026-02-30T00:00:00Z"}}, "START_FROM|startFrom", id="no-such-date"
    ),
]


@pytest.mark.parametrize(("kafka", "words"), GAPS)
def test_what_the_recorder_refuses_the_operator_refuses(kafka: dict[str, Any], words: str) -> None:
    spec = {**BASE, "kafka": {**BASE["kafka"], **kafka}}
    with pytest.raises(ValueError, match=words):
        recorder_settings(rendered(spec))  # the recorder refuses it...
    with pytest.raises(SpecError, match=words):
        parse_spec("rec", "md", spec)  # ...so the operator should, naming the field


@pytest.mark.parametrize("topics", [["trades:tick", "depth:orderbook"], ["Market.Order-Book"]])
def test_topics_whose_kind_is_said_reach_the_recorder(topics: list[str]) -> None:
    spec = {**BASE, "kafka": {**BASE["kafka"], "topics": topics}}
    assert topics == recorder_settings(rendered(spec)).KAFKA_TOPICS


_PIECES = st.sampled_from(["tick", "TICK", "orderbook", "Order_Book", "order-book", "trade", "."])
_TOPICS = st.lists(
    st.one_of(_PIECES, st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", max_size=6)),
    min_size=1,
    max_size=4,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(name=_TOPICS, suffix=st.sampled_from(["", ":tick", ":orderbook", ":quote"]))
def test_the_operator_tells_a_topic_kind_as_the_recorder_does(name: str, suffix: str) -> None:
    topic = name + suffix
    try:
        expected: str | None = str(recorder_topic_kind(topic))
    except ValueError:
        expected = None
    try:
        got: str | None = operator_topic_kind(topic)
    except SpecError:
        got = None
    assert got == expected
