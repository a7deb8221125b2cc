"""Lag and the operator's own scaling: reading the group's lag from Kafka, moving replicas.

Owns the Kafka access a DataRecorder's Secrets give the operator (never a password in clear
text unless the spec allows it), the lag poll, and mode `operator`'s scaling with its fallback.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from datarecorder_operator import (
    jaas,
    kafkalag,
    kube,
    metrics,
    naming,
)
from datarecorder_operator.lag import (
    committed_offsets,
    compute_lag,
    desired_replicas,
    excluding,
    persistent_partitions,
    with_activation,
)
from datarecorder_operator.policy import (
    SECRET_MARK_ANNOTATION,
    secret_marked_for,
)
from datarecorder_operator.scaler import Stabilizer
from datarecorder_operator.spec import (
    TOKEN_MECHANISMS,
    RecorderSpec,
    SpecError,
)
from datarecorder_operator.state import Events, ObjectState, OperatorConfig, now_iso


class CredentialsUnavailable(Exception):
    """The operator may not (or cannot) read the Kafka credentials a spec names. One message
    for every cause: a tenant must not learn from the status whether a Secret or key exists."""

    def __init__(self, recorder: str) -> None:
        super().__init__(
            "the Kafka credentials in spec.kafka are not readable by the operator: a Secret "
            "they name is missing, lacks the key, or is not marked for this DataRecorder "
            f"(annotation {SECRET_MARK_ANNOTATION} listing {recorder!r})"
        )


async def _kafka_access(client: kube.KubeClient, spec: RecorderSpec) -> kafkalag.KafkaAccess:
    """Broker address and, for secured clusters, credentials from the referenced Secrets —
    only from Secrets marked for this DataRecorder, and never a password in clear text unless
    the spec allows it."""

    async def secret_value(name: str, key: str) -> str:
        secret = await client.get("v1", "Secret", spec.namespace, name)
        data = (secret or {}).get("data") or {}
        if not secret_marked_for(secret, spec.name) or key not in data:
            raise CredentialsUnavailable(spec.name)
        return base64.b64decode(data[key]).decode()

    access = kafkalag.KafkaAccess(
        brokers=spec.kafka.brokers, security_protocol=spec.kafka.security_protocol
    )
    if spec.kafka.sasl is not None:
        sasl = spec.kafka.sasl
        if (
            sasl.mechanism == "PLAIN"
            and spec.kafka.security_protocol == "SASL_PLAINTEXT"
            and not sasl.allow_plaintext_password
        ):  # parse_spec refuses it too; the one place a password leaves, checked here again
            raise SpecError("refusing to send a SASL PLAIN password over SASL_PLAINTEXT")
        if sasl.jaas_config is not None:
            line = await secret_value(sasl.jaas_config.name, sasl.jaas_config.key)
            try:
                user, password = jaas.credentials(line)
            except ValueError as exc:
                where = (
                    f"Secret {spec.namespace}/{sasl.jaas_config.name} key {sasl.jaas_config.key}"
                )
                raise SpecError(f"{where}: {exc}") from None
        else:
            username, secret = sasl.username, sasl.password
            if username is None or secret is None:  # the token mechanisms: see lag_not_read
                raise SpecError(f"the operator has no Kafka login for {sasl.mechanism}")
            user = (
                username
                if isinstance(username, str)
                else await secret_value(username.name, username.key)
            )
            password = await secret_value(secret.name, secret.key)
        access = dataclasses.replace(
            access, sasl_mechanism=sasl.mechanism, sasl_username=user, sasl_password=password
        )
    tls = spec.kafka.tls
    if tls is not None:
        # The same trust and client certificate as the recorders: on an mTLS listener the
        # operator's lag reads are refused without the certificate.
        access = dataclasses.replace(access, ca_pem=await secret_value(tls.ca.name, tls.ca.key))
        if tls.cert is not None and tls.key is not None:
            access = dataclasses.replace(
                access,
                cert_pem=await secret_value(tls.cert.name, tls.cert.key),
                key_pem=await secret_value(tls.key.name, tls.key.key),
            )
    return access


def lag_not_read(spec: RecorderSpec) -> str | None:
    """Pure: why the operator does not read this DataRecorder's lag itself, if it does not.

    OAUTHBEARER and AWS_MSK_IAM log in with a token the recorder pods get (from the token
    endpoint, or signed with the pods' own AWS identity, which the operator's pod does not
    have): the operator makes no login of its own for them, and the lag is the recorders'
    `datarecorder_lag_records` (what mode hpa scales on; mode operator is refused)."""
    sasl = spec.kafka.sasl
    if sasl is None or sasl.mechanism not in TOKEN_MECHANISMS:
        return None
    return (
        f"the operator does not read the lag with kafka.sasl.mechanism {sasl.mechanism} (the "
        "token is the recorder pods' own): the recorders' datarecorder_lag_records metric has it"
    )


async def poll_lag(
    client: kube.KubeClient, spec: RecorderSpec, state: ObjectState, config: OperatorConfig
) -> None:
    not_read = lag_not_read(spec)
    if not_read is not None:  # not a failure: no fallback replicas, no Warning per outage
        state.lag, state.lag_error, state.lag_failures = None, not_read, 0
        return
    try:
        access = await _kafka_access(client, spec)
        offsets = await state.lag_reader.read(
            access, spec.kafka.group_id, spec.kafka.topic_names, within=config.kafka_timeout_seconds
        )
    except Exception as exc:  # any Kafka failure only makes the lag unknown for a while
        # The credentials' message is whole (it says what to annotate); others are cut short.
        detail = str(exc) if isinstance(exc, CredentialsUnavailable) else repr(exc)[:270]
        state.lag, state.lag_error = None, f"cannot read lag from Kafka: {detail}"
        state.lag_failures += 1
        metrics.LAG_READS.labels("error").inc()
        return
    state.lag = compute_lag(offsets, spec.autoscaling.offset_reset_policy)
    committed = committed_offsets(offsets)
    state.persistent = persistent_partitions(state.lag, committed, state.committed)
    state.committed = committed
    state.lag_time, state.lag_error, state.lag_failures = now_iso(), None, 0
    metrics.LAG_READS.labels("ok").inc()


async def scale(
    client: kube.KubeClient,
    events: Events,
    spec: RecorderSpec,
    state: ObjectState,
    deployment: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Operator mode: move the Deployment's replicas towards what the lag asks for; while the
    lag cannot be read, keep them, or after `fallback.failureThreshold` failed reads in a row
    run `fallback.replicas` (as KEDA does)."""
    auto = spec.autoscaling
    current = int((deployment.get("spec") or {}).get("replicas", 1))
    if state.lag is None:
        fallback = fallback_replicas(spec, state.lag_failures)
        if fallback is None or fallback == current:
            return deployment
        target, reason, detail = fallback, "fallback", f"{state.lag_failures} lag reads failed"
    else:
        window, step = auto.scale_down_stabilization_seconds, auto.scale_down_step
        if state.stabilizer is None or (state.stabilizer.window_seconds, state.stabilizer.step) != (
            window,
            step,
        ):
            state.stabilizer = Stabilizer(window, step)
        # Persistent lag (KEDA's excludePersistentLag) does not ask for replicas, but still
        # counts for activation: a stuck partition keeps the recorders from idling, as in KEDA.
        scaling_lag = (
            excluding(state.lag, state.persistent) if auto.exclude_persistent_lag else state.lag
        )
        wanted = desired_replicas(
            scaling_lag,
            target_lag_per_replica=auto.target_lag_per_replica,
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            limit_to_partitions_with_lag=auto.limit_to_partitions_with_lag,
        )
        wanted = with_activation(
            wanted,
            state.lag,
            activation_lag=auto.activation_lag_threshold,
            idle_replicas=auto.idle_replicas,
        )
        decision = state.stabilizer.decide(now, wanted, current)
        if decision.replicas == current:
            return deployment
        target, reason = decision.replicas, decision.reason
        detail = f"lag {state.lag.total} on {state.lag.partitions} partitions"
    patched = await client.patch(
        "apps/v1",
        "Deployment",
        spec.namespace,
        naming.child_name(spec.name, "Deployment"),
        {"spec": {"replicas": target}},
    )
    state.last_scale_time = now_iso()
    metrics.SCALE_DECISIONS.labels("up" if target > current else "down", reason).inc()
    kind = "Warning" if reason == "fallback" else "Normal"
    await events(kind, "Scaled", f"{reason}: {current} -> {target} replicas ({detail})")
    return patched or deployment


def fallback_replicas(spec: RecorderSpec, failures: int) -> int | None:
    """Pure: the replicas KEDA-style fallback asks for after `failures` failed reads, if any."""
    fallback = spec.autoscaling.fallback
    if fallback is None or failures < fallback.failure_threshold:
        return None
    return min(fallback.replicas, spec.autoscaling.max_replicas)
