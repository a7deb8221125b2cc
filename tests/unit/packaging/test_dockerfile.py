"""The Dockerfile, read without Docker: stages, user, entrypoints, healthcheck, build context."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.unit.packaging.helpers import (
    ROOT,
    Stage,
    build_context,
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


VENV = "/opt/datarecorder"


def test_builder_fills_a_venv_and_the_final_stage_copies_only_it(
    stages: list[Stage], final: Stage
) -> None:
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    builder = stages[0]
    runs = " ".join(builder.args_of("RUN"))
    assert f"venv --without-pip {VENV}" in runs
    assert "pip wheel" in runs and f"--python {VENV}/bin/python install" in runs
    # Both stages on the same base: the venv's python is a link to the base's interpreter.
    assert final.base == builder.base
    for run in final.args_of("RUN"):
        assert not re.search(r"\bpip\S* +(install|wheel|download)\b", run), run
    (copy,) = final.args_of("COPY")
    assert copy == f"--from={builder.name} {VENV} {VENV}"
    (env,) = final.args_of("ENV")
    assert f"PATH={VENV}/bin:$PATH" in env


def test_the_builder_installs_only_hashed_locks(stages: list[Stage]) -> None:
    """Every download is checked against a sha256 of a lock (--require-hashes), binary wheels
    only, without resolving (--no-deps: the lock is the set); the one other install is the
    project's own wheel, built here, from no index."""
    installs = [
        part
        for run in stages[0].args_of("RUN")
        for part in run.split("&&")
        if " install " in part and "pip" in part
    ]
    locks = []
    for part in installs:
        words = part.split()
        if "--no-index" in words:
            assert "/wheels/" in part, part
            continue
        assert {"--require-hashes", "--no-deps", "--only-binary=:all:", "-r"} <= set(words), part
        locks.append(words[words.index("-r") + 1])
    assert locks == ["requirements.lock", "requirements-build.lock"]
    for lock in locks:
        assert (ROOT / lock).exists() and not excluded(lock, dockerignore_patterns())


def test_the_final_stage_removes_the_installers_of_the_base_image(
    final: Stage, tmp_path: Path
) -> None:
    """The final stage's own removal commands, run on a copy of the base image's layout
    (python:3.11-slim ships pip, setuptools and wheel in site-packages, and ensurepip)."""
    root = tmp_path / "usr" / "local"
    site = root / "lib" / "python3.11" / "site-packages"
    kept = [root / "bin" / "python3.11", site / "README.txt", root / "lib/python3.11/venv/x.py"]
    base = [
        *(site / n / "__init__.py" for n in ("pip", "setuptools", "wheel", "_distutils_hack")),
        *(site / n / "RECORD" for n in ("pip-24.0.dist-info", "setuptools-65.5.1.dist-info")),
        site / "distutils-precedence.pth",
        root / "lib" / "python3.11" / "ensurepip" / "_bundled" / "pip-24.0-py3-none-any.whl",
        *(root / "bin" / n for n in ("pip", "pip3", "pip3.11", "wheel")),
    ]
    for path in kept + base:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    removals = [
        part.strip()
        for run in final.args_of("RUN")
        for part in run.split("&&")
        if part.strip().startswith(("rm ", "find "))
    ]
    assert removals
    script = " && ".join(removals).replace("/usr/local/", f"{root}/")
    subprocess.run(["bash", "-euc", script], check=True, timeout=30)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(p.relative_to(tmp_path).as_posix() for p in kept)


@pytest.mark.slow
def test_the_builders_commands_run_here_and_make_a_venv_that_runs_the_entrypoint(
    stages: list[Stage], final: Stage, tmp_path: Path
) -> None:
    """The builder stage's RUN commands as written, on this machine: the build context as
    the working directory, /opt and /wheels moved under tmp_path, the interpreter the project's
    venv was made from as `python` (the base image's role: a CPython 3.11 with pip). The venv
    they fill then runs the image's ENTRYPOINT and has no pip. 20-90 s (installs; load)."""
    builder = stages[0]
    context = tmp_path / "src"
    build_context(context)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for assignment in " ".join(builder.args_of("ENV")).split():
        key, _, value = assignment.partition("=")
        env[key] = value
    # The locks' files come from the index once, into the wheelhouse `scripts/constraints
    # --verify` keeps (hash-checked there); the commands then install from it, checked again.
    wheelhouse = Path.home() / ".cache" / "datarecorder" / "wheels"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for lock in ("requirements.lock", "requirements-build.lock"):
        download = subprocess.run(
            ["flock", str(wheelhouse), sys.executable, "-m", "pip", "download", "-q",
             "--require-hashes", "--no-deps", "--only-binary=:all:", "--dest", str(wheelhouse),
             "-r", str(ROOT / lock)],
            env={**env, "PIP_FIND_LINKS": ""}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert download.returncode == 0, download.stderr
    env["PIP_FIND_LINKS"], env["PIP_NO_INDEX"] = str(wheelhouse), "1"
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["PIP_NO_COMPILE"] = "1"  # the image's .pyc files are not what is checked here
    for run in builder.args_of("RUN"):
        command = run.replace("/opt/", f"{tmp_path}/opt/").replace("/wheels", f"{tmp_path}/wheels")
        proc = subprocess.run(
            ["bash", "-euc", command], cwd=context, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, f"{run}\n{proc.stdout}{proc.stderr}"

    (copy,) = final.args_of("COPY")
    venv = Path(f"{tmp_path}{copy.split()[1]}")
    (image_env,) = final.args_of("ENV")
    assert f"PATH={copy.split()[1]}/bin:" in image_env
    (entrypoint,) = final.args_of("ENTRYPOINT")
    run_env = {**env, "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    argv = [*exec_form(entrypoint), "operator", "run", "--help"]
    proc = subprocess.run(
        argv, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--liveness" in proc.stdout, proc.stderr
    no_pip = subprocess.run(
        ["python", "-c", "import pip"], cwd=tmp_path, env=run_env, capture_output=True, text=True
    )
    assert "No module named 'pip'" in no_pip.stderr
    # The dev services stay out of the image: nothing a pod runs imports them, and the demo
    # says where it runs instead of failing on an import.
    no_devstack = subprocess.run(
        ["python", "-c", "import recorder.devstack"], cwd=tmp_path, env=run_env, capture_output=True, text=True
    )  # fmt: skip
    assert "No module named 'recorder.devstack'" in no_devstack.stderr
    demo = subprocess.run(
        [*exec_form(entrypoint), "demo", "--duration", "1"], cwd=tmp_path, env=run_env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert demo.returncode == 2 and "not in this installation" in demo.stderr, demo.stderr


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
    context = ("pyproject.toml", "README.md", "recorder/cli.py", "recorder/runtime/metrics.py",
               "requirements.lock", "requirements-build.lock")  # fmt: skip
    for needed in context:
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
