"""Parsing `spec.kafka`: brokers, topics, the group, SASL and TLS, startFrom and the rack.

Owns the Kafka section's defaults and the checks the CRD schema cannot do for it; pure.
"""

from __future__ import annotations

import re
from datetime import datetime

from datarecorder_operator.spec import (
    PASSWORD_MECHANISMS,
    TOKEN_MECHANISMS,
    KafkaRack,
    KafkaSASL,
    KafkaSpec,
    KafkaTLS,
    OAuthBearer,
    SecretKey,
    SpecError,
)
from datarecorder_operator.spec_reader import Reader, check_key_name, exactly_one

# The node labels Kubernetes copies onto a pod at binding (PodTopologyLabelsAdmission, 1.33+):
# the only node labels a pod can read through the downward API.
POD_TOPOLOGY_LABELS = ("topology.kubernetes.io/zone", "topology.kubernetes.io/region")
RACK_ID = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9._]{0,61}[A-Za-z0-9])?")


OAUTHBEARER_FORM = (
    "expected oauthbearer: {tokenEndpointURL: https://login.example.com/oauth2/token, "
    "clientId: datarecorder, clientSecretSecret: {name: <Secret>, key: <key>}}"
)
# The CRD's patterns: an http(s) URL of a host name or IPv4 address, and an AWS region.
TOKEN_URL = re.compile(r"https?://[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/\S*)?")
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


def _parse_oauthbearer(raw: Reader) -> OAuthBearer:
    """spec.kafka.sasl.oauthbearer: the client-credentials grant, its secret from a Secret."""
    if not raw.data:
        raise SpecError(
            f"spec.kafka.sasl.mechanism OAUTHBEARER needs {raw.path}; {OAUTHBEARER_FORM}"
        )
    url = raw.text("tokenEndpointURL").strip()
    if not TOKEN_URL.fullmatch(url):
        raise SpecError(
            f"{raw.path}.tokenEndpointURL {url!r} is not an http(s) URL; {OAUTHBEARER_FORM}"
        )
    secret = raw.sub("clientSecretSecret")
    if not secret.data:
        raise SpecError(f"{secret.path} is required; {OAUTHBEARER_FORM}")
    key = secret.text("key")
    return OAuthBearer(
        token_endpoint_url=url,
        client_id=raw.text("clientId"),
        client_secret=SecretKey(secret.text("name"), key),
        scope=raw.text("scope", ""),
    )


def _parse_token_sasl(raw: Reader, protocol: str, mechanism: str) -> KafkaSASL:
    """OAUTHBEARER (a token endpoint) or AWS_MSK_IAM (the pod's AWS identity): no password."""
    allow_plaintext = raw.flag("allowPlaintextPassword", False)
    if mechanism == "OAUTHBEARER":
        if protocol == "SASL_PLAINTEXT" and not allow_plaintext:
            raise SpecError(
                "spec.kafka.sasl.mechanism OAUTHBEARER over securityProtocol SASL_PLAINTEXT "
                "sends the bearer token in clear text: use SASL_SSL, or set "
                "spec.kafka.sasl.allowPlaintextPassword: true"
            )
        return KafkaSASL(
            mechanism=mechanism,
            username=None,
            password=None,
            allow_plaintext_password=allow_plaintext,
            oauthbearer=_parse_oauthbearer(raw.sub("oauthbearer")),
        )
    if protocol != "SASL_SSL":
        raise SpecError(
            "spec.kafka.sasl.mechanism AWS_MSK_IAM needs securityProtocol SASL_SSL "
            "(MSK's IAM listener is TLS only)"
        )
    region = raw.opt_text("awsRegion")
    if region is None or not AWS_REGION.fullmatch(region):
        raise SpecError(
            "spec.kafka.sasl.mechanism AWS_MSK_IAM needs spec.kafka.sasl.awsRegion, the MSK "
            f"cluster's region (e.g. eu-west-1){f', not {region!r}' if region else ''}"
        )
    return KafkaSASL(mechanism=mechanism, username=None, password=None, aws_region=region)


def _parse_sasl(kafka_raw: Reader, protocol: str) -> KafkaSASL | None:
    """SASL credentials: the password always from a Secret; the username from the same Secret
    (`usernameKey`) or literal (`username`: a Strimzi KafkaUser's Secret has no username key);
    or both from a `sasl.jaas.config` line in the Secret (`jaasConfigKey`)."""
    if not protocol.startswith("SASL_"):
        return None
    if not kafka_raw.has("sasl"):
        raise SpecError(f"spec.kafka.sasl is required when securityProtocol is {protocol}")
    raw = kafka_raw.sub("sasl")
    mechanism = raw.text(
        "mechanism", "SCRAM-SHA-512", choices=(*PASSWORD_MECHANISMS, *TOKEN_MECHANISMS)
    )
    for field, used_by in (("oauthbearer", "OAUTHBEARER"), ("awsRegion", "AWS_MSK_IAM")):
        if raw.has(field) and mechanism != used_by:
            raise SpecError(f"spec.kafka.sasl.{field} is only used with mechanism {used_by}")
    if mechanism in TOKEN_MECHANISMS:
        return _parse_token_sasl(raw, protocol, mechanism)
    secret = raw.text("secretName")
    literal = raw.opt_text("username")
    jaas_key = raw.opt_text("jaasConfigKey")
    if jaas_key is not None and literal is not None:
        raise SpecError(
            "spec.kafka.sasl: username and jaasConfigKey exclude each other "
            "(the JAAS config carries the username)"
        )
    allow_plaintext = raw.flag("allowPlaintextPassword", False)
    if mechanism == "PLAIN" and protocol == "SASL_PLAINTEXT" and not allow_plaintext:
        raise SpecError(
            "spec.kafka.sasl.mechanism PLAIN over securityProtocol SASL_PLAINTEXT sends the "
            "password in clear text: use SASL_SSL or SCRAM, or set "
            "spec.kafka.sasl.allowPlaintextPassword: true"
        )
    # The CRD defaults usernameKey, so a literal username simply wins over it.
    return KafkaSASL(
        allow_plaintext_password=allow_plaintext,
        jaas_config=SecretKey(secret, jaas_key) if jaas_key is not None else None,
        mechanism=mechanism,
        username=literal
        if literal is not None
        else SecretKey(secret, raw.text("usernameKey", "username")),
        password=SecretKey(secret, raw.text("passwordKey", "password")),
    )


def _parse_tls(raw: Reader) -> KafkaTLS:
    """Either one Secret (`secretName` + `caKey`/`certKey`/`keyKey`) or Strimzi's shape:
    `trustedCertificates: [{secretName, certificate}]` and `certificateAndKey: {secretName,
    certificate, key}`, each naming its own Secret."""
    strimzi = raw.has("trustedCertificates") or raw.has("certificateAndKey")
    if strimzi and (raw.has("secretName") or raw.has("certKey") or raw.has("keyKey")):
        raise SpecError(
            "spec.kafka.tls: use either secretName/caKey/certKey/keyKey or "
            "trustedCertificates/certificateAndKey, not both"
        )
    if not strimzi:
        cert_key, key_key = raw.opt_text("certKey"), raw.opt_text("keyKey")
        if (cert_key is None) != (key_key is None):
            raise SpecError("spec.kafka.tls.certKey and spec.kafka.tls.keyKey must be set together")
        secret = raw.text("secretName")
        return KafkaTLS(
            ca=SecretKey(secret, raw.text("caKey", "ca.crt")),
            cert=SecretKey(secret, cert_key) if cert_key else None,
            key=SecretKey(secret, key_key) if key_key else None,
        )
    trusted = raw.data.get("trustedCertificates")
    if not isinstance(trusted, list) or len(trusted) != 1:
        raise SpecError(
            "spec.kafka.tls.trustedCertificates must hold exactly one {secretName, certificate} "
            "(the recorder trusts one CA file)"
        )
    ca_raw = Reader(trusted[0], "spec.kafka.tls.trustedCertificates[0]")
    ca = SecretKey(ca_raw.text("secretName"), ca_raw.text("certificate", "ca.crt"))
    if not raw.has("certificateAndKey"):
        return KafkaTLS(ca=ca, cert=None, key=None)
    pair = raw.sub("certificateAndKey")
    secret = pair.text("secretName")
    return KafkaTLS(
        ca=ca,
        cert=SecretKey(secret, pair.text("certificate", "user.crt")),
        key=SecretKey(secret, pair.text("key", "user.key")),
    )


# The recorder's START_FROM time form (recorder.runtime.settings): a date-time with a zone.
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
START_FROM_FORM = (
    'expected {time: "<RFC 3339 date-time with a zone>"} (e.g. {time: '
    '"2026-12-01T00:00:00Z"}) or {offset: <integer >= 0>}'
)
MAX_OFFSET = 2**63 - 1

# How the recorder tells a topic's kind (recorder.core.kinds.topic_kind; a unit test holds the
# two rules equal): `name:kind`, else the longest of these found in the lower-cased name.
KIND_HINTS = {"tick": ("tick",), "orderbook": ("orderbook", "order_book", "order-book")}
TOPIC_FORM = (
    "name it with 'tick' or 'orderbook' (or 'order_book' / 'order-book') in it, "
    "or write '<topic>:tick' / '<topic>:orderbook'"
)


def topic_kind(topic: str) -> str:
    """The record kind `topic` carries, as the recorder will read it; SpecError otherwise."""
    name, sep, kind = topic.partition(":")
    if sep:
        if kind in KIND_HINTS:
            return kind
        raise SpecError(
            f"spec.kafka.topics: {topic!r}: the kind after ':' must be tick or orderbook"
        )
    lowered = name.lower()
    found = [(len(h), k) for k, hints in KIND_HINTS.items() for h in hints if h in lowered]
    if not found:
        raise SpecError(f"spec.kafka.topics: cannot tell what {name!r} carries: {TOPIC_FORM}")
    return max(found)[1]


def check_time(path: str, value: str) -> None:
    """An RFC 3339 date-time with a zone that exists on the calendar (2026-02-30 does not)."""
    if RFC3339.fullmatch(value):
        head, zone = (
            value[:19].replace("t", "T").replace(" ", "T"),
            value[19:].lstrip(".0123456789"),
        )
        try:
            datetime.fromisoformat(head + ("+00:00" if zone in ("Z", "z") else zone))
            return
        except ValueError:
            raise SpecError(
                f"{path} {value!r} is not a date-time on the calendar; {START_FROM_FORM}"
            ) from None
    raise SpecError(f"{path} {value!r} is not an RFC 3339 date-time; {START_FROM_FORM}")


def parse_start_from(raw: Reader) -> str | None:
    """spec.kafka.startFrom: where a sink without progress starts (exactly one of `time` and
    `offset`), as the recorder's START_FROM; None when absent."""
    if not raw.data:
        return None
    exactly_one(raw, "time", "offset", START_FROM_FORM)
    if raw.has("time"):
        value = raw.text("time").strip()
        check_time(f"{raw.path}.time", value)
        return f"time:{value}"
    try:
        return f"offset:{raw.integer('offset', 0, 0, MAX_OFFSET)}"
    except SpecError as exc:
        raise SpecError(f"{exc}; {START_FROM_FORM}") from None


RACK_FORM = (
    "expected {topologyKey: topology.kubernetes.io/zone} (or .../region: the node labels "
    'Kubernetes copies onto pods) or {id: "<rack>"} (e.g. {id: "eu-west-1a"})'
)


def parse_rack(raw: Reader) -> KafkaRack | None:
    """spec.kafka.rack: the consumer's client.rack, for fetching from a replica in its zone."""
    if not raw.data:
        return None
    exactly_one(raw, "topologyKey", "id", RACK_FORM)
    if raw.has("id"):
        value = raw.text("id")
        if not RACK_ID.fullmatch(value):
            raise SpecError(f"{raw.path}.id {value!r} is not a rack name; {RACK_FORM}")
        return KafkaRack(id=value)
    return KafkaRack(topology_key=raw.text("topologyKey", choices=POD_TOPOLOGY_LABELS))


def parse_kafka(root: Reader, name: str, namespace: str) -> KafkaSpec:
    """spec.kafka: brokers, topics, group and how to authenticate."""
    kafka_raw = root.sub("kafka")
    protocol = kafka_raw.text(
        "securityProtocol", "PLAINTEXT", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    )
    sasl = _parse_sasl(kafka_raw, protocol)
    tls: KafkaTLS | None = None
    if kafka_raw.has("tls"):
        if protocol not in ("SSL", "SASL_SSL"):
            raise SpecError("spec.kafka.tls is only used with securityProtocol SSL or SASL_SSL")
        tls = _parse_tls(kafka_raw.sub("tls"))
    kafka = KafkaSpec(
        brokers=kafka_raw.text_list("brokers"),
        topics=kafka_raw.text_list("topics", ["market.tick", "market.orderbook"]),
        group_id=kafka_raw.text("groupId", f"datarecorder.{namespace}.{name}"),
        security_protocol=protocol,  # type: ignore[arg-type]  # checked by choices above
        sasl=sasl,
        tls=tls,
        start_from=parse_start_from(kafka_raw.sub("startFrom")),
        rack=parse_rack(kafka_raw.sub("rack")),
    )
    check_key_name("spec.kafka.groupId", kafka.group_id)
    for topic in kafka.topics:
        topic_kind(topic)
    for broker in kafka.brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SpecError(f"spec.kafka.brokers: {broker!r} is not host:port")
    return kafka
