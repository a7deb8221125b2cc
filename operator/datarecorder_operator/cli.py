"""Command line of the operator: `render -f FILE` (print children) and `run` (kopf, with
optional leader election on a Lease).

Owns argument parsing and the kopf runtime wiring; `main(argv) -> int` is what
`datarecorder operator ...` and `python -m datarecorder_operator ...` call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TextIO

import yaml

from datarecorder_operator import handlers, kube, leader, rendering
from datarecorder_operator.parsing import parse_spec
from datarecorder_operator.policy import POLICY_MODES, RESTRICTED, Policy
from datarecorder_operator.spec import API_VERSION, KIND, SpecError


def render_documents(
    documents: Iterable[Any], *, service_monitor: bool = True, policy: Policy = RESTRICTED
) -> list[Any]:
    """Every child of every DataRecorder in `documents` (other kinds are skipped), each spec
    held to `policy` as the running operator would."""
    out: list[Any] = []
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        if doc.get("apiVersion") != API_VERSION:
            raise SpecError(f"apiVersion must be {API_VERSION}, got {doc.get('apiVersion')!r}")
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            raise SpecError("metadata.name is required")
        spec = parse_spec(name, meta.get("namespace") or "default", doc.get("spec"), policy)
        out.extend(rendering.render_children(spec, service_monitor_available=service_monitor))
    return out


def _render(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    docs: list[Any] = []
    for path in args.file:
        if path == "-":
            docs.extend(yaml.safe_load_all(sys.stdin))
        else:
            with open(path, encoding="utf-8") as fh:
                docs.extend(yaml.safe_load_all(fh))
    try:
        children = render_documents(
            docs, service_monitor=not args.no_service_monitor, policy=policy_from_args(args)
        )
    except SpecError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    if not children:
        print(f"error: no {API_VERSION} {KIND} document in {', '.join(args.file)}", file=stderr)
        return 2
    stdout.write(yaml.safe_dump_all(children, sort_keys=False, explicit_start=True))
    return 0


# The policy from the environment, for installs that set env rather than args (the flags win).
POLICY_ENV = "DATARECORDER_POLICY"
ALLOWED_IMAGES_ENV = "DATARECORDER_ALLOWED_IMAGES"  # comma-separated prefixes
ALLOWED_SERVICE_ACCOUNTS_ENV = "DATARECORDER_ALLOWED_SERVICE_ACCOUNTS"  # comma-separated names


def _env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in environ.get(name, "").split(",") if item.strip())


def policy_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Policy:
    """The guardrails from `--policy`, `--allowed-image` and `--allowed-service-account`, else
    from $DATARECORDER_POLICY, $DATARECORDER_ALLOWED_IMAGES and
    $DATARECORDER_ALLOWED_SERVICE_ACCOUNTS; restricted when neither says."""
    env = os.environ if environ is None else environ
    wanted = args.policy or env.get(POLICY_ENV, "").strip() or "restricted"
    modes = [mode for mode in POLICY_MODES if mode == wanted]
    if not modes:
        raise SystemExit(
            f"{POLICY_ENV}={wanted!r}: expected one of {', '.join(POLICY_MODES)} "
            "(restricted when unset)"
        )
    return Policy(
        mode=modes[0],
        allowed_images=tuple(args.allowed_image or ()) or _env_list(env, ALLOWED_IMAGES_ENV),
        allowed_service_accounts=tuple(args.allowed_service_account or ())
        or _env_list(env, ALLOWED_SERVICE_ACCOUNTS_ENV),
    )


def _policy_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("policy (what a DataRecorder may ask of its pods)")
    group.add_argument(
        "--policy",
        choices=POLICY_MODES,
        default=None,
        help=f"restricted (the default, unless ${POLICY_ENV} says otherwise): refuse privileged "
        "or root pods, added capabilities, privilege escalation, host namespaces, hostPath "
        "and other volume types outside the allow-list, images outside --allowed-image, "
        "ServiceAccounts not listed; permissive: render what the spec asks (creating a "
        "DataRecorder then equals creating pods)",
    )
    group.add_argument(
        "--allowed-image",
        action="append",
        metavar="PREFIX",
        help="registry or repository prefix images must come from (repeatable; none: "
        f"${ALLOWED_IMAGES_ENV}, comma-separated; neither: any)",
    )
    group.add_argument(
        "--allowed-service-account",
        action="append",
        metavar="NAME",
        help="a ServiceAccount spec.serviceAccountName may name (repeatable; none: "
        f"${ALLOWED_SERVICE_ACCOUNTS_ENV}, comma-separated)",
    )


def election_config(args: argparse.Namespace) -> leader.ElectionConfig:
    """Where the Lease lives (the pod's namespace from the downward API, else the first
    watched namespace) and who we are (the pod's name, plus a suffix unique to this process)."""
    namespace = args.leader_election_namespace or os.environ.get("POD_NAMESPACE")
    namespace = namespace or (args.namespace or ["default"])[0]
    identity = (
        args.identity
        or f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    )
    return leader.ElectionConfig(
        namespace=namespace,
        identity=identity,
        name=args.lease_name,
        lease_seconds=args.lease_duration,
        renew_deadline_seconds=args.renew_deadline,
        retry_seconds=args.retry_period,
    )


@contextlib.asynccontextmanager
async def standby_liveness(url: str | None) -> AsyncIterator[None]:
    """While a replica waits for the Lease, its liveness endpoint answers (kopf's starts only
    with kopf): a standby is alive, and the kubelet must not restart it."""
    if not url:
        yield
        return
    from aiohttp import web

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    parts = urllib.parse.urlsplit(url)
    app = web.Application()
    app.router.add_get(parts.path or "/", alive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname, parts.port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _operate(args: argparse.Namespace) -> int:
    import kopf

    config = handlers.OperatorConfig(
        tick_seconds=args.tick,
        resync_seconds=args.resync,
        metrics_port=args.metrics_port,
        policy=policy_from_args(args),
    )
    namespaces: Sequence[str] = args.namespace or ()
    elector = None
    if args.leader_election:
        settings = kopf.OperatorSettings()
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
        if info is None:
            raise SystemExit("leader election: no service account and no kubeconfig to log in")
        elector = leader.LeaseElector(kube.KubeClient(info, timeout=10), election_config(args))
        async with standby_liveness(args.liveness):
            await elector.acquire()
    operator = asyncio.create_task(
        kopf.operator(
            registry=handlers.build_registry(config),
            # kopf's peering stays off: the Lease above is the one election.
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
            memo=handlers.OperatorMemo(),
        )
    )
    if elector is None:
        await operator
        return 0
    holding = asyncio.create_task(elector.hold())
    await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
    if holding.done():
        # Renewals failed for the renew deadline: another replica may lead soon, and this
        # one must not write a moment longer: exit at once, as client-go's leaders do.
        logging.shutdown()
        os._exit(1)
    holding.cancel()
    await elector.release()  # a clean stop (SIGTERM): the standby takes over at once
    await elector.client.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_operate(args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datarecorder operator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="print the children of DataRecorder documents as YAML")
    r.add_argument("-f", "--file", action="append", required=True, help="YAML file, or - (stdin)")
    r.add_argument(
        "--no-service-monitor",
        action="store_true",
        help="render as if the ServiceMonitor CRD were not installed",
    )
    _policy_arguments(r)
    run = sub.add_parser("run", help="run the operator (kopf, standalone)")
    run.add_argument("-n", "--namespace", action="append", help="watch only this namespace")
    run.add_argument("--tick", type=float, default=5.0, help="resync loop period in seconds")
    run.add_argument("--resync", type=float, default=30.0, help="re-apply children every N s")
    run.add_argument("--liveness", default=None, help="kopf liveness endpoint URL")
    run.add_argument(
        "--metrics-port", type=int, default=0, help="serve the operator's /metrics here (0: off)"
    )
    _policy_arguments(run)
    election = run.add_argument_group("leader election (several replicas, one leader)")
    election.add_argument(
        "--leader-election",
        action="store_true",
        help="hold a coordination.k8s.io Lease before working (for more than one replica)",
    )
    election.add_argument("--lease-name", default="datarecorder-operator")
    election.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the Lease (default: $POD_NAMESPACE, else the first --namespace)",
    )
    election.add_argument(
        "--identity", default=None, help="holder identity (default: $POD_NAME + a random suffix)"
    )
    election.add_argument("--lease-duration", type=float, default=15.0, help="seconds")
    election.add_argument("--renew-deadline", type=float, default=10.0, help="seconds")
    election.add_argument("--retry-period", type=float, default=2.0, help="seconds")
    run.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "render":
        return _render(args, stdout or sys.stdout, stderr or sys.stderr)
    return _run(args)
