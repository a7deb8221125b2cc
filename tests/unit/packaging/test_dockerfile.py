"""The Dockerfile, read without Docker: stages, user, entrypoints, healthcheck, build context."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import yaml

from tests.unit.packaging.helpers import (
    ROOT,
    Stage,
    dockerfile_stages,
    dockerignore_patterns,
    excluded,
    exec_form,
    pyproject,
)

COMPILERS = ("gcc", "g++", "build-essential", "clang", "make ", "cargo", "rustc")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_builder_stage_builds_wheels_and_final_stage_installs_only_them(
    stages: list[Stage], final: Stage
) -> None:
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    builder = stages[0]
    assert any("pip wheel" in run for run in builder.args_of("RUN"))
    assert final.base == "python:3.11-slim"
    installs = [run for run in final.args_of("RUN") if "pip install" in run]
    assert len(installs) == 1
    # Only the builder's wheels: no index, wheels from the builder stage.
    assert "--no-index" in installs[0] and "--find-links=/wheels" in installs[0]
    assert f"from={builder.name}" in installs[0]
    assert not final.args_of("COPY"), "the final stage copies no sources"


def test_final_stage_has_no_compilers(final: Stage) -> None:
    for run in final.args_of("RUN"):
        assert "apt-get install" not in run and "apk add" not in run, run
        for tool in COMPILERS:
            assert tool not in run, f"{tool!r} in final stage: {run}"


def test_runs_as_non_root_uid_10001(final: Stage) -> None:
    assert final.args_of("USER")[-1].split(":")[0] == "10001"
    creates = " ".join(final.args_of("RUN"))
    assert "--uid 10001" in creates and "--gid 10001" in creates


def test_entrypoint_is_the_console_script_of_pyproject(final: Stage) -> None:
    (entrypoint,) = final.args_of("ENTRYPOINT")
    (cmd,) = final.args_of("CMD")
    assert exec_form(entrypoint) == ["datarecorder"]
    assert exec_form(cmd) == ["run"]
    scripts = pyproject()["project"]["scripts"]
    assert scripts["datarecorder"] == "recorder.cli:main"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--help"], ("--env-file",)),
        # The chart's operator Deployment passes exactly these flags.
        (["operator", "run", "--help"], ("--liveness", "--namespace", "--verbose")),
    ],
)
def test_both_entrypoints_exist(argv: list[str], expected: tuple[str, ...]) -> None:
    """`datarecorder run` and `datarecorder operator run`, through the console script's target."""
    module, _, func = pyproject()["project"]["scripts"]["datarecorder"].partition(":")
    code = f"import sys; from {module} import {func}; sys.exit({func}(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    for flag in expected:
        assert flag in proc.stdout


def test_exposes_the_recorders_http_port(final: Stage) -> None:
    from recorder.runtime.settings import Settings

    assert final.args_of("EXPOSE") == ["8080"]
    assert Settings.model_fields["HTTP_PORT"].default == 8080


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/health" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"OK\n" if code == 200 else b"unhealthy\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthcheck_argv(final: Stage) -> list[str]:
    (check,) = final.args_of("HEALTHCHECK")
    assert " CMD " in f" {check} "
    argv = exec_form(check.split("CMD", 1)[1].strip())
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_health(
    final: Stage, health_server: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    """The HEALTHCHECK's own command, run against a real HTTP server on loopback."""
    _Health.status = status
    env = {**os.environ, "HTTP_PORT": str(health_server.server_address[1])}
    proc = subprocess.run(_healthcheck_argv(final), env=env, capture_output=True, timeout=30)
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_healthcheck_fails_when_nothing_listens(final: Stage) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    server.server_close()  # a port that was free a moment ago and now has no listener
    env = {**os.environ, "HTTP_PORT": str(port)}
    proc = subprocess.run(_healthcheck_argv(final), env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0


def test_build_context_is_an_allow_list_of_what_the_wheel_needs() -> None:
    patterns = dockerignore_patterns()
    for allowed in (p[1:] for p in patterns if p.startswith("!")):
        assert (ROOT / allowed).exists(), f".dockerignore allows {allowed}, which does not exist"
    for needed in ("pyproject.toml", "README.md", "recorder/cli.py", "recorder/runtime/metrics.py"):
        assert not excluded(needed, patterns), needed
    for sql in (ROOT / "recorder" / "migrations").glob("*.sql"):
        assert not excluded(sql.relative_to(ROOT).as_posix(), patterns)
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "helm/check_chart.py"):
        assert excluded(unwanted, patterns), unwanted
    assert excluded("recorder/__pycache__/cli.cpython-311.pyc", patterns)


def test_compose_file_uses_only_known_settings_and_commands() -> None:
    """docker-compose.yml is not run in CI: at least its names must be the recorder's."""
    from recorder.runtime.settings import Settings

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "timescaledb", "minio", "recorder"} <= set(services)
    env = services["recorder"]["environment"]
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    unknown = set(env) - set(Settings.model_fields) - aws
    assert not unknown, f"not recorder settings: {sorted(unknown)}"
    assert services["recorder"]["build"] == "."
    for name in ("recorder", "feed"):
        argv = services[name]["command"]
        module, _, func = pyproject()["project"]["scripts"]["datarecorder"].partition(":")
        code = f"import sys; from {module} import {func}; sys.exit({func}(sys.argv[1:]))"
        proc = subprocess.run(
            [sys.executable, "-c", code, argv[0], "--help"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        for flag in (a for a in argv[1:] if a.startswith("--")):
            assert flag in proc.stdout, f"{name}: {flag} is not an option of {argv[0]}"


def constraints() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every line must be `name==version`."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not a pin: {line!r}"
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_image_builds_its_wheels_at_the_constraints_versions(stages: list[Stage]) -> None:
    (build,) = [run for run in stages[0].args_of("RUN") if "pip wheel" in run]
    assert "--constraint constraints.txt" in build or "-c constraints.txt" in build
    assert not excluded("constraints.txt", dockerignore_patterns())


def test_constraints_pin_every_dependency_at_pyprojects_version() -> None:
    """Each of pyproject's pins appears with the same version, with its dependencies too
    (more lines than direct dependencies), so the image has no unpinned package."""
    pins = constraints()
    direct = pyproject()["project"]["dependencies"]
    for requirement in direct:
        name, sep, version = requirement.partition("==")
        assert sep, f"pyproject dependency {requirement!r} is not pinned"
        assert pins.get(name.lower().replace("_", "-")) == version, requirement
    assert len(pins) > len(direct)


def test_the_constraints_are_what_the_tests_run_with() -> None:
    """scripts/bootstrap installs .venv under the same constraints: tests see the image's
    versions (an installed package at another version means a stale .venv or file)."""
    from importlib.metadata import PackageNotFoundError, version

    assert "-c constraints.txt" in (ROOT / "scripts" / "bootstrap").read_text()
    for name, pinned in constraints().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # e.g. a platform-specific dependency
        assert installed == pinned, f"{name}: .venv has {installed}, constraints.txt {pinned}"
