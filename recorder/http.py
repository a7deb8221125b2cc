"""HTTP endpoints of a recorder pod (aiohttp, one port): /health, /ready, /metrics.

/health keeps the original service's plain-text form: `OK` then one `part: healthy` line each.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from recorder import metrics
from recorder.pipeline import Recorder


def health_report(parts: dict[str, bool]) -> tuple[int, str]:
    """Pure: status code and body of /health for each part's health."""
    ok = all(parts.values())
    lines = ["OK" if ok else "UNHEALTHY"]
    lines += [f"{name}: {'healthy' if good else 'unhealthy'}" for name, good in parts.items()]
    return (200 if ok else 503), "\n".join(lines) + "\n"


def build_app(recorder: Recorder) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        parts = {"consumer": recorder.health.consumer_ok()}
        if recorder.db is not None:
            parts["timescaledb"] = recorder.db.healthy
        if recorder.s3 is not None:
            parts["s3"] = recorder.s3.healthy
        parts["dead_letters"] = recorder.dead_letter_part()[0]
        status, body = health_report(parts)
        return web.Response(status=status, text=body)

    async def ready(_: web.Request) -> web.Response:
        h = recorder.health
        problems = recorder.problems()
        if h.started and not h.stopping and h.consumer_ok() and not problems:
            return web.Response(text="ready\n")
        lines = [f"{part}: {reason}" for part, reason in problems.items()]
        return web.Response(status=503, text="\n".join(["not ready", *lines]) + "\n")

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_view)
    return app


async def serve(recorder: Recorder, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(recorder), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
