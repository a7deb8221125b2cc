"""Handle on the Prometheus of scripts/monitoring for the tests: targets, rules, queries.

Owns the test's view of Prometheus: file_sd target files and rule files under .monitoring/
(one per test, removed afterwards), the reload, and polling the HTTP API for conditions.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.integration.monitoring.rulefiles import MONITORING, ROOT, write_rules

STATE = Path(os.environ.get("DATARECORDER_MONITORING_DIR", ROOT / ".monitoring"))
T = TypeVar("T")


def run_monitoring(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(MONITORING), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )


def poll(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Prometheus:
    url: str
    _files: list[Path] = field(default_factory=list)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as res:
            body = json.loads(res.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or [] for an empty one)."""
        data = self.api("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when the result is empty."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """Active alerts (pending or firing) whose labels include `labels`."""
        found: list[dict[str, Any]] = self.api("/api/v1/alerts")["alerts"]
        return [a for a in found if all(a["labels"].get(k) == v for k, v in labels.items())]

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts(alertname=alertname, **labels) if a["state"] == "firing"]

    def add_targets(self, name: str, targets: Mapping[str, Mapping[str, str]]) -> None:
        """Write file_sd group `name`: {"127.0.0.1:PORT": {labels}} (rewritten in place)."""
        path = STATE / "targets" / f"{name}.json"
        groups = [{"targets": [t], "labels": dict(labels)} for t, labels in targets.items()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.rename(path)  # file_sd must never read a half-written file
        if path not in self._files:
            self._files.append(path)

    def load_rules(self, name: str, groups: list[dict[str, Any]]) -> None:
        """Write rule file `name` and reload; waits until Prometheus lists its groups."""
        path = write_rules(groups, STATE / "rules" / f"{name}.yaml")
        self._files.append(path)
        self.reload()
        wanted = {g["name"] for g in groups}
        poll(
            lambda: (
                wanted
                <= {
                    g["name"] for g in self.api("/api/v1/rules")["groups"] if g["file"] == str(path)
                }
            ),
            timeout=30,
            what=f"Prometheus to load {path}",
        )

    def reload(self) -> None:
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass

    def cleanup(self) -> None:
        rules = any(p.parent.name == "rules" for p in self._files)
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files.clear()
        if rules:
            self.reload()
