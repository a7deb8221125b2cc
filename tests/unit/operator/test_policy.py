"""The operator's guardrails (issue 21): restricted refuses what a tenant could not run itself,
permissive renders the spec as asked, and user security contexts merge onto safe defaults.

Owns the property test of `policy_violations` against a reference predicate, and the checks
of the names that reach object keys (the operator's and the recorder's validators agree).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from datarecorder_operator import cli, naming, rendering, workload
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import (
    ALLOWED_VOLUME_TYPES,
    PERMISSIVE,
    RESTRICTED,
    SECRET_MARK_ANNOTATION,
    Policy,
    image_allowed,
    key_name_problem,
    secret_marked_for,
)
from datarecorder_operator.spec import SpecError
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.runtime.settings import ConfigError, load_settings

BASE: dict[str, Any] = {
    "image": "ghcr.io/example/datarecorder:0.1.0",
    "kafka": {"brokers": ["k:9092"]},
    "timescaledb": {"host": "db", "passwordSecret": {"name": "tsdb"}},
}

# The issue's "root shell on the node".
ROOT_SHELL: dict[str, Any] = {
    **BASE,
    "image": "docker.io/evil/shell:latest",
    "serviceAccountName": "datarecorder-operator",
    "containerSecurityContext": {
        "privileged": True,
        "runAsUser": 0,
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["SYS_ADMIN"]},
    },
    "podSecurityContext": {"runAsNonRoot": False},
    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    "volumeMounts": [{"name": "host", "mountPath": "/host"}],
}


def pod(spec: dict[str, Any], policy: Policy = RESTRICTED) -> dict[str, Any]:
    parsed = parse_spec("rec", "md", spec, policy)
    result: dict[str, Any] = workload.render_deployment(parsed, 1)["spec"]["template"]["spec"]
    return result


def test_the_root_shell_is_refused_by_default_naming_every_reason() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("rec", "md", ROOT_SHELL, Policy(allowed_images=("ghcr.io/example",)))
    message = str(info.value)
    assert message.startswith("refused by policy restricted: ")
    for needle in (
        "spec.containerSecurityContext.privileged",
        "spec.containerSecurityContext.runAsUser: uid 0",
        "spec.containerSecurityContext.allowPrivilegeEscalation",
        "spec.containerSecurityContext.capabilities.add",
        "spec.podSecurityContext.runAsNonRoot",
        "spec.volumes[0]: volume type hostPath is not allowed",
        "spec.image: 'docker.io/evil/shell:latest' is not from an allowed registry",
        "spec.serviceAccountName: 'datarecorder-operator' is not an allowed ServiceAccount",
    ):
        assert needle in message, needle


def test_permissive_renders_the_root_shell_as_asked() -> None:
    got = pod(ROOT_SHELL, PERMISSIVE)
    container = got["containers"][0]
    assert container["image"] == "docker.io/evil/shell:latest"
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["runAsUser"] == 0
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert got["securityContext"]["runAsNonRoot"] is False
    assert {"name": "host", "hostPath": {"path": "/"}} in got["volumes"]
    assert got["serviceAccountName"] == "datarecorder-operator"


def test_render_cli_takes_the_policy_flags(tmp_path: Path) -> None:
    path = tmp_path / "shell.yaml"
    doc = {"apiVersion": "datarecorder.dev/v1alpha1", "kind": "DataRecorder"}
    path.write_text(yaml.safe_dump({**doc, "metadata": {"name": "rec"}, "spec": ROOT_SHELL}))
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["render", "-f", str(path)], stdout=out, stderr=err) == 2
    assert "refused by policy restricted" in err.getvalue() and out.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    argv = ["render", "-f", str(path), "--policy", "permissive"]
    assert cli.main(argv, stdout=out, stderr=err) == 0, err.getvalue()
    assert "privileged: true" in out.getvalue()


def test_a_listed_service_account_and_an_allowed_image_pass() -> None:
    policy = Policy(allowed_images=("ghcr.io/example/",), allowed_service_accounts=("mine",))
    got = pod({**BASE, "serviceAccountName": "mine", "automountServiceAccountToken": True}, policy)
    assert got["serviceAccountName"] == "mine" and got["automountServiceAccountToken"] is True


def test_no_token_of_the_namespaces_default_service_account() -> None:
    with pytest.raises(SpecError, match=r"spec\.automountServiceAccountToken"):
        parse_spec("rec", "md", {**BASE, "automountServiceAccountToken": True})


@pytest.mark.parametrize(
    ("image", "prefixes", "allowed"),
    [
        ("ghcr.io/acme/rec:1", (), True),
        ("ghcr.io/acme/rec:1", ("ghcr.io/acme",), True),
        ("ghcr.io/acme/rec:1", ("ghcr.io/acme/",), True),
        ("ghcr.io/acme-evil/rec:1", ("ghcr.io/acme",), False),  # a prefix ends at a boundary
        ("ghcr.io/acme", ("ghcr.io/acme",), True),
        ("ghcr.io/acme@sha256:" + "a" * 64, ("ghcr.io/acme",), True),
        ("registry.example.com:5000/rec:1", ("registry.example.com",), True),
        ("docker.io/library/busybox", ("ghcr.io/", "quay.io/"), False),
        ("quay.io/x/y", ("ghcr.io/", "quay.io/"), True),
    ],
)
def test_image_prefixes_match_at_a_path_boundary(
    image: str, prefixes: tuple[str, ...], allowed: bool
) -> None:
    assert image_allowed(image, prefixes) is allowed


def test_user_security_contexts_merge_onto_the_safe_defaults() -> None:
    got = pod(
        {
            **BASE,
            "podSecurityContext": {"runAsUser": 2000, "seccompProfile": {"type": "Localhost"}},
            "containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}},
        }
    )
    assert got["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 2000,
        "seccompProfile": {"type": "Localhost"},
    }
    assert got["containers"][0]["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL", "NET_RAW"]},
    }


def test_null_does_not_unset_a_safe_default() -> None:
    nulls = {"runAsNonRoot": None, "allowPrivilegeEscalation": None, "capabilities": None}
    got = pod({**BASE, "containerSecurityContext": nulls, "podSecurityContext": nulls})
    container = got["containers"][0]["securityContext"]
    assert container["runAsNonRoot"] is True and container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert got["securityContext"]["runAsNonRoot"] is True


# --- Property: restricted refuses exactly what a plain reference predicate says. -----------

BOOLS = st.sampled_from([None, True, False])
UIDS = st.sampled_from([None, 0, 1, 10001])
SECCOMP = st.sampled_from([None, "RuntimeDefault", "Localhost", "Unconfined"])
VOLUME_TYPES = st.sampled_from(
    [
        *sorted(ALLOWED_VOLUME_TYPES),
        "hostPath",
        "nfs",
        "gitRepo",
        "iscsi",
        "image",
        "csi",
        "ephemeral",
    ]
)
IMAGES = st.sampled_from(
    ["ghcr.io/example/rec:1", "ghcr.io/example-evil/rec:1", "docker.io/x/y", "quay.io/a/b:2"]
)
PREFIX_LISTS = st.sampled_from([(), ("ghcr.io/example",), ("quay.io/", "docker.io/x")])
CAPABILITIES: list[dict[str, list[str]] | None] = [
    None,
    {"drop": ["NET_RAW"]},
    {"add": ["NET_ADMIN"]},
    {"add": []},
]
SERVICE_ACCOUNTS = st.sampled_from([None, "mine", "theirs", "default"])


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    ctx = _drop_none(
        {
            "privileged": draw(BOOLS),
            "runAsUser": draw(UIDS),
            "runAsNonRoot": draw(BOOLS),
            "allowPrivilegeEscalation": draw(BOOLS),
            "readOnlyRootFilesystem": draw(BOOLS),
        }
    )
    seccomp = draw(SECCOMP)
    if seccomp is not None:
        ctx["seccompProfile"] = {"type": seccomp}
    caps = draw(st.sampled_from(CAPABILITIES))
    if caps is not None:
        ctx["capabilities"] = caps
    return ctx


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {**BASE, "image": draw(IMAGES)}
    for key in ("podSecurityContext", "containerSecurityContext"):
        ctx = draw(contexts())
        if ctx is not None:
            spec[key] = ctx
    n = draw(st.integers(0, 2))
    spec["volumes"] = [{"name": f"v{i}", draw(VOLUME_TYPES): {}} for i in range(n)]
    sa = draw(SERVICE_ACCOUNTS)
    if sa is not None:
        spec["serviceAccountName"] = sa
    elif draw(st.booleans()):
        spec["serviceAccount"] = {}
    spec["automountServiceAccountToken"] = draw(st.booleans())
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if draw(st.integers(0, 5)) == 0:
            spec[field] = True
    return spec


def reference_allows(spec: dict[str, Any], policy: Policy) -> bool:
    """The rules as the issue states them, written out without the operator's code."""
    for key in ("podSecurityContext", "containerSecurityContext"):
        ctx = spec.get(key) or {}
        if ctx.get("privileged") is True or ctx.get("allowPrivilegeEscalation") is True:
            return False
        if ctx.get("runAsUser") == 0 or ctx.get("runAsNonRoot") is False:
            return False
        if (ctx.get("capabilities") or {}).get("add"):
            return False
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            return False
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        return False
    safe_types = {"configMap", "downwardAPI", "emptyDir", "persistentVolumeClaim"}
    safe_types |= {"projected", "secret"}
    if any(set(v) - {"name"} - safe_types for v in spec["volumes"]):
        return False
    if policy.allowed_images and not any(
        spec["image"].startswith(p.rstrip("/") + "/") for p in policy.allowed_images
    ):
        return False
    sa = spec.get("serviceAccountName")
    if sa is not None and sa not in policy.allowed_service_accounts:
        return False
    own = "serviceAccount" in spec or sa is not None
    return not (spec["automountServiceAccountToken"] and not own)


@settings(max_examples=400, deadline=None)
@given(spec=specs(), images=PREFIX_LISTS, accounts=st.sampled_from([(), ("mine",)]))
def test_restricted_refuses_exactly_what_the_reference_refuses(
    spec: dict[str, Any], images: tuple[str, ...], accounts: tuple[str, ...]
) -> None:
    policy = Policy(allowed_images=images, allowed_service_accounts=accounts)
    try:
        parse_spec("rec", "md", spec, policy)
        accepted = True
    except SpecError as exc:
        assert str(exc).startswith("refused by policy restricted"), exc
        accepted = False
    assert accepted == reference_allows(spec, policy)


@settings(max_examples=200, deadline=None)
@given(spec=specs())
def test_permissive_accepts_and_what_restricted_accepts_renders_safe(spec: dict[str, Any]) -> None:
    permissive = pod(spec, PERMISSIVE)
    # Merged, never replaced: whatever the user wrote, ALL stays dropped.
    assert "ALL" in permissive["containers"][0]["securityContext"]["capabilities"]["drop"]
    policy = Policy(allowed_service_accounts=("mine", "theirs", "default"))
    if not reference_allows(spec, policy):
        return
    got = pod(spec, policy)
    for ctx in (got["securityContext"], got["containers"][0]["securityContext"]):
        assert ctx["runAsNonRoot"] is True and ctx.get("runAsUser") != 0
        assert ctx.get("privileged") is not True
    container = got["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"][0] == "ALL" and "add" not in container["capabilities"]


# --- Names that reach object keys and paths (item 4). ---------------------------------------

KEY_TEXT = st.text(
    alphabet=st.sampled_from(["a", "Z", "0", ".", "-", "_", "/", "\x00", "\n", "\x7f", "\x85"]),
    min_size=1,
    max_size=8,
)


def reference_key_ok(value: str) -> bool:
    controls = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}
    return ".." not in value and value[0] != "/" and value[-1] != "/" and not set(value) & controls


@settings(max_examples=300, deadline=None)
@given(value=KEY_TEXT)
def test_operator_and_recorder_refuse_the_same_key_names(value: str) -> None:
    expected = reference_key_ok(value)
    assert (key_name_problem(value) is None) == expected
    for variable in ("KAFKA_GROUP_ID", "S3_PREFIX"):
        try:
            load_settings(**{variable: value})
            accepted = True
        except ConfigError as exc:
            assert variable in str(exc)
            accepted = False
        assert accepted == expected, (variable, value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prefix", "../escape", r"spec\.s3\.prefix '\.\./escape' must not contain '\.\.'"),
        ("prefix", "/abs", r"must not start or end with '/'"),
        ("prefix", "lake/", r"must not start or end with '/'"),
        ("prefix", "la\nke", r"must not contain control characters"),
        ("groupId", "a..b", r"spec\.kafka\.groupId 'a\.\.b' must not contain '\.\.'"),
    ],
)
def test_key_names_are_refused_with_a_clear_message(field: str, value: str, message: str) -> None:
    spec = {**BASE, "s3": {"prefix": "market-data"}}
    if field == "prefix":
        spec["s3"] = {"prefix": value}
    else:
        spec["kafka"] = {**BASE["kafka"], "groupId": value}
    with pytest.raises(SpecError, match=message):
        parse_spec("rec", "md", spec)


def test_plain_password_over_plaintext_only_when_the_spec_allows_it() -> None:
    sasl: dict[str, Any] = {"mechanism": "PLAIN", "secretName": "kafka-user"}
    kafka: dict[str, Any] = {
        "brokers": ["k:9092"],
        "securityProtocol": "SASL_PLAINTEXT",
        "sasl": sasl,
    }
    with pytest.raises(SpecError, match=r"sends the password in clear text"):
        parse_spec("rec", "md", {**BASE, "kafka": kafka})
    allowed = {**kafka, "sasl": {**sasl, "allowPlaintextPassword": True}}
    spec = parse_spec("rec", "md", {**BASE, "kafka": allowed})
    assert spec.kafka.sasl is not None and spec.kafka.sasl.allow_plaintext_password
    # Over TLS, or with SCRAM (no password on the wire), nothing to allow.
    parse_spec("rec", "md", {**BASE, "kafka": {**kafka, "securityProtocol": "SASL_SSL"}})
    scram = {**kafka, "sasl": {**sasl, "mechanism": "SCRAM-SHA-512"}}
    parse_spec("rec", "md", {**BASE, "kafka": scram})


def test_every_secret_the_pods_can_read_is_found() -> None:
    spec = parse_spec(
        "rec",
        "md",
        {
            **BASE,
            "kafka": {
                "brokers": ["k:9093"],
                "securityProtocol": "SASL_SSL",
                "sasl": {"secretName": "kafka-user"},
                "tls": {"secretName": "kafka-ca"},
            },
            "s3": {"enabled": True, "bucket": "lake", "credentialsSecret": {"name": "s3"}},
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-ref", "key": "k"}}}],
            "envFrom": [{"secretRef": {"name": "env-from"}}, {"configMapRef": {"name": "cm"}}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "projected": {"sources": [{"secret": {"name": "projected"}}]}},
            ],
            "imagePullSecrets": [{"name": "pull"}],
        },
    )
    deployment = workload.render_deployment(spec, 1)
    assert workload.referenced_secrets(deployment) == (
        "env-from", "env-ref", "kafka-ca", "kafka-user", "projected", "s3", "tsdb", "vol",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("annotation", "marked"),
    [(None, False), ("rec", True), ("other, rec", True), ("other", False), ("*", True),
     ("recorder", False), ("", False)],
)  # fmt: skip
def test_a_secret_is_marked_by_name_or_for_every_recorder(
    annotation: str | None, marked: bool
) -> None:
    meta: dict[str, Any] = {"name": "s"}
    if annotation is not None:
        meta["annotations"] = {SECRET_MARK_ANNOTATION: annotation}
    assert secret_marked_for({"metadata": meta}, "rec") is marked
    assert secret_marked_for(None, "rec") is False


def test_a_network_policy_per_recorder_when_asked() -> None:
    assert all(
        c["kind"] != "NetworkPolicy"
        for c in rendering.render_children(parse_spec("rec", "md", BASE))
    )
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    kafka = {"to": [{"ipBlock": {"cidr": "10.1.0.0/24"}}], "ports": [{"port": 9092}]}
    spec = parse_spec(
        "rec",
        "md",
        {
            **BASE,
            "networkPolicy": {"enabled": True, "metricsFrom": [monitoring], "egress": [kafka]},
        },
    )
    (policy,) = [c for c in rendering.render_children(spec) if c["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["name"] == "rec-recorder"
    body = policy["spec"]
    assert body["podSelector"] == {"matchLabels": naming.selector_labels(spec)}
    assert body["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}], "from": [monitoring]}]
    assert body["policyTypes"] == ["Ingress", "Egress"]
    assert body["egress"] == [rendering.DNS_EGRESS, kafka]
    ingress_only = parse_spec("rec", "md", {**BASE, "networkPolicy": {"enabled": True}})
    (policy,) = [c for c in rendering.render_children(ingress_only) if c["kind"] == "NetworkPolicy"]
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]


def test_the_policy_comes_from_the_flags_else_the_environment() -> None:
    run = cli.parser()
    env = {
        "DATARECORDER_POLICY": "permissive",
        "DATARECORDER_ALLOWED_IMAGES": "ghcr.io/acme/, quay.io/acme",
        "DATARECORDER_ALLOWED_SERVICE_ACCOUNTS": "mine,",
    }
    assert cli.policy_from_args(run.parse_args(["run"]), {}) == RESTRICTED
    assert cli.policy_from_args(run.parse_args(["run"]), env) == Policy(
        mode="permissive",
        allowed_images=("ghcr.io/acme/", "quay.io/acme"),
        allowed_service_accounts=("mine",),
    )
    flags = [
        "run",
        "--policy=restricted",
        "--allowed-image=r.example/",
        "--allowed-service-account=x",
    ]
    assert cli.policy_from_args(run.parse_args(flags), env) == Policy(
        allowed_images=("r.example/",), allowed_service_accounts=("x",)
    )
    with pytest.raises(SystemExit, match=r"DATARECORDER_POLICY='lax': expected one of"):
        cli.policy_from_args(run.parse_args(["run"]), {"DATARECORDER_POLICY": "lax"})


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("KAFKA_GROUP_ID", "a/../b", "contains '..'"),
        ("S3_PREFIX", "/lake", "starts or ends with '/'"),
        ("S3_PREFIX", "lake\n", "contains a control character"),
    ],
)
def test_settings_name_the_variable_and_the_expected_form(
    variable: str, value: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{variable: value})
    message = str(info.value)
    assert f"{variable}={value!r}: {value!r} {why}" in message
    assert "expected a name that becomes part of object keys and paths" in message
