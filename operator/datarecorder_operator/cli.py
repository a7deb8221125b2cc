"""Command line of the operator: `render -f FILE` (print children) and `run` (kopf).

Owns argument parsing and the kopf runtime wiring; `main(argv) -> int` is what
`datarecorder operator ...` and `python -m datarecorder_operator ...` call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import yaml

from datarecorder_operator import handlers, rendering
from datarecorder_operator.spec import API_VERSION, KIND, SpecError, parse_spec


def render_documents(documents: Iterable[Any], *, service_monitor: bool = True) -> list[Any]:
    """Every child of every DataRecorder in `documents` (other kinds are skipped)."""
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
        spec = parse_spec(name, meta.get("namespace") or "default", doc.get("spec"))
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
        children = render_documents(docs, service_monitor=not args.no_service_monitor)
    except SpecError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    if not children:
        print(f"error: no {API_VERSION} {KIND} document in {', '.join(args.file)}", file=stderr)
        return 2
    stdout.write(yaml.safe_dump_all(children, sort_keys=False, explicit_start=True))
    return 0


def _run(args: argparse.Namespace) -> int:
    import kopf

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = handlers.OperatorConfig(
        tick_seconds=args.tick, resync_seconds=args.resync, metrics_port=args.metrics_port
    )
    registry = handlers.build_registry(config)
    namespaces: Sequence[str] = args.namespace or ()
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,  # one operator per cluster (Deployment with 1 replica, Recreate)
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(),
        )
    )
    return 0


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
    run = sub.add_parser("run", help="run the operator (kopf, standalone)")
    run.add_argument("-n", "--namespace", action="append", help="watch only this namespace")
    run.add_argument("--tick", type=float, default=5.0, help="resync loop period in seconds")
    run.add_argument("--resync", type=float, default=30.0, help="re-apply children every N s")
    run.add_argument("--liveness", default=None, help="kopf liveness endpoint URL")
    run.add_argument(
        "--metrics-port", type=int, default=0, help="serve the operator's /metrics here (0: off)"
    )
    run.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "render":
        return _render(args, stdout or sys.stdout, stderr or sys.stderr)
    return _run(args)
