"""The wheel the Dockerfile builds: made the same way from the same context, then installed.

`pip wheel --no-deps` on a copy of the Docker build context (per .dockerignore), installed with
`--no-deps` into a fresh venv that borrows the dependencies of the running one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.unit.packaging.helpers import ROOT, build_context, pyproject

MIGRATIONS = ROOT / "migrations"
# Builds a wheel and asks the package index: 20-40 s on the 2-core machine.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Docker build context: the repository filtered by .dockerignore."""
    root = tmp_path_factory.mktemp("context")
    build_context(root)
    return root


@pytest.fixture(scope="module")
def wheel(context: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp / "wheels"),
         "--only-binary=:all:", str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = (tmp / "wheels").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel installed and the running venv's packages on its path.

    The running venv's site-packages is added by a .pth line, so its own .pth files (the
    editable install of this repository) are not processed: `recorder` must come from the wheel.
    """
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "_deps_of_test_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    # Run from the venv, not the repository, so the source tree is not importable by accident.
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=venv, env=env, check=False
    )


def test_wheel_declares_the_console_script_and_holds_both_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text
    assert "datarecorder = recorder.cli:main" in text
    assert pyproject()["project"]["scripts"]["datarecorder"] == "recorder.cli:main"
    assert "recorder/cli.py" in names and "recorder/py.typed" in names
    assert "datarecorder_operator/cli.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_wheel_ships_the_sql_migrations(wheel: Path) -> None:
    sources = sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    if not sources:
        pytest.skip("no SQL files under migrations/ yet")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("recorder/migrations/"))
    assert shipped == sources


def test_installed_console_script_runs_from_the_wheel(venv: Path) -> None:
    proc = _run(venv, str(venv / "bin" / "datarecorder"), "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "migrate", "operator"):
        assert command in proc.stdout
    proc = _run(venv, str(venv / "bin" / "datarecorder"), "operator", "run", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--liveness" in proc.stdout


def test_installed_packages_and_migrations_come_from_the_venv(venv: Path) -> None:
    code = (
        "import importlib.resources as r, recorder, datarecorder_operator;"
        "print(recorder.__file__); print(datarecorder_operator.__file__);"
        "print(' '.join(sorted(p.name for p in r.files('recorder').joinpath('migrations')"
        ".iterdir() if p.name.endswith('.sql'))))"
    )
    proc = _run(venv, str(venv / "bin" / "python"), "-c", code)
    assert proc.returncode == 0, proc.stderr
    recorder_file, operator_file, migrations = proc.stdout.splitlines()
    assert recorder_file.startswith(str(venv)), recorder_file
    assert operator_file.startswith(str(venv)), operator_file
    expected = sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    if not expected:
        pytest.skip("no SQL files under migrations/ yet")
    assert migrations.split() == expected


def test_every_dependency_comes_as_a_binary_wheel(context: Path, tmp_path: Path) -> None:
    """The builder stage uses --only-binary=:all: so that no stage needs a compiler: a
    dependency published only as an sdist would break `docker build`. Resolved against the
    package index for this interpreter (CPython 3.11, glibc Linux, like python:3.11-slim)."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--only-binary=:all:", "--report", str(report), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = json.loads(report.read_text())["install"]
    names = {item["metadata"]["name"].lower() for item in installs}
    assert {"data-recorder", "kopf", "pyarrow", "asyncpg"} <= names
    from_sdist = [
        item["metadata"]["name"]
        for item in installs
        if item["metadata"]["name"] != "data-recorder"
        and not item["download_info"]["url"].endswith(".whl")
    ]
    assert from_sdist == []
