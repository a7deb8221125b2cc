"""HTTP endpoints of a recorder pod (aiohttp, one port): /live, /ready, /health, /metrics.

Owns what each probe means. /live answers whenever this process's event loop does, and
nothing else: Kubernetes must never restart a recorder because a store is down (that would
stop the other path too). /ready and /health report the consumer and the stores; /health
keeps the original service's plain-text form (`OK`, then one `part: healthy` line each).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from recorder.coordinator.health import Health, dead_letter_part, problems
from recorder.core.readiness import REASONS, Problem, describe
from recorder.pipeline import Recorder
from recorder.runtime import metrics

# One named part of the pod's readiness: (ok, why not). A new reason for unreadiness is one
# more entry in `readiness_parts` and one more code in `recorder.core.readiness.REASONS`. The
# bodies carry codes and fixed sentences only: the raw errors are in the log.
Part = tuple[bool, Problem]


def health_report(parts: Mapping[str, str | None]) -> tuple[int, str]:
    """Pure: status code and body of /health; each part is None when healthy, else its code."""
    ok = all(code is None for code in parts.values())
    lines = ["OK" if ok else "UNHEALTHY"]
    for name, code in parts.items():
        if code is None:
            lines.append(f"{name}: healthy")
        elif code not in REASONS:  # a code, never an error's text
            raise ValueError(f"unknown reason code {code!r}")
        else:
            lines.append(f"{name}: unhealthy {code}")
    return (200 if ok else 503), "\n".join(lines) + "\n"


def readiness_report(parts: Mapping[str, Part]) -> tuple[int, str]:
    """Pure: status code and body of /ready; the body names every part that is not ready, with
    its code and the code's fixed sentence."""
    failing = [describe(name, problem) for name, (ok, problem) in parts.items() if not ok]
    if not failing:
        return 200, "ready\n"
    return 503, "not ready\n" + "\n".join(failing) + "\n"


def consumer_code(health: Health) -> str | None:
    """Why the consumer is not well, or None."""
    if health.consumer_ok():
        return None
    if health.consumer_error is not None:
        return "consumer_failed"
    return "starting" if not health.started else "consumer_not_fetching"


def readiness_parts(recorder: Recorder) -> dict[str, Part]:
    """The recorder's parts as /ready judges them (reads shared state only, no I/O)."""
    h = recorder.health
    consumer = consumer_code(h)
    parts: dict[str, Part] = {
        "lifecycle": (
            h.started and not h.stopping,
            Problem("stopping" if h.stopping else "starting"),
        ),
        "consumer": (consumer is None, Problem(consumer or "consumer_not_fetching")),
    }
    if recorder.settings.PAUSED:
        # Paused on purpose (spec.state paused): up and in the group, but not recording.
        parts["paused"] = (False, Problem("paused"))
    for sink in recorder.sinks:
        parts[sink.name] = (sink.healthy, Problem("store_unreachable"))
    # Halted or held partitions, dead letters refused, a store's failing writes: each with the
    # pipeline's code (a sink's code replaces the generic one above).
    for name, problem in problems(recorder.partitions, recorder.sinks).items():
        parts[name] = (False, problem)
    return parts


def health_parts(recorder: Recorder) -> dict[str, str | None]:
    parts = {"consumer": consumer_code(recorder.health)}
    found = problems(recorder.partitions, recorder.sinks)
    for sink in recorder.sinks:
        problem = found.get(sink.name)
        parts[sink.name] = (
            None if sink.healthy else (problem.code if problem is not None else "store_unreachable")
        )
    parts["dead_letters"] = (
        None if dead_letter_part(recorder.partitions)[0] else "dead_letters_refused"
    )
    return parts


def build_app(recorder: Recorder) -> web.Application:
    async def live(_: web.Request) -> web.Response:
        # Answering at all is the check: a blocked or dead event loop cannot run this.
        return web.Response(text="alive\n")

    async def ready(_: web.Request) -> web.Response:
        status, body = readiness_report(readiness_parts(recorder))
        return web.Response(status=status, text=body)

    async def health(_: web.Request) -> web.Response:
        status, body = health_report(health_parts(recorder))
        return web.Response(status=status, text=body)

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/live", live)
    app.router.add_get("/ready", ready)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_view)
    return app


async def serve(recorder: Recorder, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(recorder), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
