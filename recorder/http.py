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

from recorder import metrics
from recorder.pipeline import Recorder

# One named part of the pod's readiness: (ok, why not). A new reason for unreadiness (halted
# partitions, a DLQ refusing writes, ...) is one more entry in `readiness_parts`.
Part = tuple[bool, str]


def health_report(parts: Mapping[str, bool]) -> tuple[int, str]:
    """Pure: status code and body of /health for each part's health."""
    ok = all(parts.values())
    lines = ["OK" if ok else "UNHEALTHY"]
    lines += [f"{name}: {'healthy' if good else 'unhealthy'}" for name, good in parts.items()]
    return (200 if ok else 503), "\n".join(lines) + "\n"


def readiness_report(parts: Mapping[str, Part]) -> tuple[int, str]:
    """Pure: status code and body of /ready; the body names every part that is not ready."""
    failing = [f"{name}: {reason}" for name, (ok, reason) in parts.items() if not ok]
    if not failing:
        return 200, "ready\n"
    return 503, "not ready\n" + "\n".join(failing) + "\n"


def readiness_parts(recorder: Recorder) -> dict[str, Part]:
    """The recorder's parts as /ready judges them (reads shared state only, no I/O)."""
    h = recorder.health
    parts: dict[str, Part] = {
        "lifecycle": (
            h.started and not h.stopping,
            "stopping" if h.stopping else "starting (migrations, joining the Kafka group)",
        ),
        "consumer": (h.consumer_ok(), h.consumer_error or "not fetching from Kafka"),
    }
    for sink in recorder.sinks:
        parts[sink.name] = (sink.healthy, "its store does not answer")
    # Halted or held partitions, dead letters refused, a store's last permanent error: each
    # with the reason the pipeline gives (a sink's message replaces its generic one above).
    for name, reason in recorder.problems().items():
        parts[name] = (False, reason)
    return parts


def health_parts(recorder: Recorder) -> dict[str, bool]:
    parts = {"consumer": recorder.health.consumer_ok()}
    for sink in recorder.sinks:
        parts[sink.name] = sink.healthy
    parts["dead_letters"] = recorder.dead_letter_part()[0]
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
