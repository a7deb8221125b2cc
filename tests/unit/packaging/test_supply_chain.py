"""The supply chain of the image and the release: digests, commit SHAs, hashed locks, the SBOM.

What is pinned is read from the files; the locks are installed for real from the package index
(`scripts/constraints --verify`); scripts/pin-images is run against a registry on loopback.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.packaging.helpers import ROOT, dockerfile_stages, pyproject

DIGEST_PINNED = re.compile(r"^[\w.\-/:]+@sha256:[0-9a-f]{64}$")
SHA_PINNED = re.compile(r"^[\w.\-]+/[\w.\-/]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+(\.\d+)*\b")
LOCK_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][\w.\-]*)==(?P<version>[^\s;\\]+)(?P<rest>.*)$")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A hashed lock as {canonical name: (version, [sha256, ...])}, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = LOCK_ENTRY.match(line)
        assert match, f"{path.name}: not a pinned requirement: {line!r}"
        hashes = re.findall(r"--hash=sha256:(\S+)", match["rest"])
        entries[canonicalize_name(match["name"])] = (match["version"], hashes)
    return entries


def constraint_pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = (line.partition("==") for line in lines if line.strip() and not line.startswith("#"))
    return {canonicalize_name(name): version for name, _, version in pins}


# --- what is pinned -----------------------------------------------------------------------


def test_every_dockerfile_base_is_pinned_by_digest() -> None:
    dockerfiles = _tracked("Dockerfile", "**/Dockerfile", "**/*.Dockerfile", "**/Containerfile")
    assert ROOT / "Dockerfile" in dockerfiles
    for dockerfile in dockerfiles:
        aliases: set[str | None] = set()
        for stage in dockerfile_stages(dockerfile.read_text()):
            if stage.base not in aliases:  # `FROM builder` names an earlier stage
                assert DIGEST_PINNED.match(stage.base), f"{dockerfile.name}: FROM {stage.base}"
            aliases.add(stage.name)


def test_every_workflow_action_is_pinned_by_a_commit_sha_with_its_version() -> None:
    workflows = _tracked(".github/workflows/*.yml", ".github/workflows/*.yaml")
    assert workflows
    seen = 0
    for workflow in workflows:
        text = workflow.read_text()
        jobs = yaml.safe_load(text)["jobs"].values()
        uses = [job["uses"] for job in jobs if "uses" in job]
        uses += [step["uses"] for job in jobs for step in job.get("steps", []) if "uses" in step]
        for ref in uses:
            seen += 1
            if ref.startswith("./"):
                continue  # an action of this repository, at this commit
            if ref.startswith("docker://"):
                assert DIGEST_PINNED.match(ref.removeprefix("docker://")), ref
                continue
            assert SHA_PINNED.match(ref), f"{workflow.name}: uses: {ref} is not a commit SHA"
            (line,) = [line for line in text.splitlines() if f"uses: {ref}" in line]
            assert VERSION_COMMENT.search(line), f"{workflow.name}: no `# vX.Y.Z` after {ref}"
    assert seen


def test_the_lock_is_the_constraints_with_hashes() -> None:
    lock = lock_entries(ROOT / "requirements.lock")
    assert {name: version for name, (version, _) in lock.items()} == constraint_pins()
    for name, (_, hashes) in lock.items():
        assert hashes, f"requirements.lock: {name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_build_lock_meets_the_build_system_requires() -> None:
    lock = lock_entries(ROOT / "requirements-build.lock")
    for spec in pyproject()["build-system"]["requires"]:
        requirement = Requirement(spec)
        version, hashes = lock[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), f"{spec}: locked at {version}"
        assert hashes
    assert not set(lock) & set(constraint_pins()) - {"packaging"}, "build tools in the runtime set"


def test_the_lock_is_made_for_the_release_platforms() -> None:
    """scripts/constraints hashes the wheels of the architectures the release builds."""
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    steps = release["jobs"]["image-and-chart"]["steps"]
    (build,) = [s for s in steps if "build-push-action" in s.get("uses", "")]
    platforms = build["with"]["platforms"].split(",")
    machine = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
    script = (ROOT / "scripts" / "constraints").read_text()
    (arches,) = re.findall(r"^ARCHES = \((.*)\)$", script, re.M)
    assert sorted(a.strip(' "') for a in arches.split(",") if a.strip()) == sorted(
        machine[p] for p in platforms
    )
    # And the release attaches an SBOM and provenance to what it pushes.
    assert build["with"]["sbom"] is True and "mode=max" in build["with"]["provenance"]


# --- the locks, installed for real --------------------------------------------------------


def _verify(root: Path, sbom: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "constraints"), "--verify", str(sbom)],
        capture_output=True, text=True, timeout=600, cwd=root, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.slow
def test_the_locks_install_with_their_hashes_and_the_sbom_lists_the_lock(tmp_path: Path) -> None:
    """`--require-hashes --no-deps` from the package index into a fresh venv, `pip check`, then
    the CycloneDX SBOM of that venv: every package of the lock at its pinned version, nothing
    else, under the project as the root component. ~20 s with the wheels in the pip cache."""
    sbom_path = tmp_path / "sbom.cdx.json"
    proc = _verify(ROOT, sbom_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sbom = json.loads(sbom_path.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    root = sbom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("data-recorder", pyproject()["project"]["version"])
    listed = {canonicalize_name(c["name"]): c["version"] for c in sbom["components"]}
    locked = {
        name: version for name, (version, _) in lock_entries(ROOT / "requirements.lock").items()
    }
    assert listed == locked
    for component in sbom["components"]:
        name, version = canonicalize_name(component["name"]), component["version"]
        assert component["purl"] == f"pkg:pypi/{name}@{version}"


@pytest.mark.slow
def test_a_lock_with_a_wrong_hash_does_not_install(tmp_path: Path) -> None:
    """The same check on a copy whose hash for `six` is wrong: the install refuses it."""
    for name in ("pyproject.toml", "requirements-build.lock", "scripts/constraints"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    version, (good, *_) = lock_entries(ROOT / "requirements.lock")["six"]
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    (tmp_path / "requirements.lock").write_text(f"six=={version} --hash=sha256:{bad}\n")
    # A wheelhouse of its own: pip drops a wheel whose hash it refuses.
    proc = _verify(tmp_path, tmp_path / "sbom.json", XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr and good in proc.stderr, proc.stderr


# --- scripts/pin-images against a registry on loopback ------------------------------------

OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
CHILD = "sha256:" + "3" * 64
CONFIG = "sha256:" + "4" * 64


class _Registry(http.server.BaseHTTPRequestHandler):
    """The v2 API as Docker Hub answers an anonymous pull: 401 with a Bearer challenge, a token
    from the realm, then manifests by tag (HEAD: Docker-Content-Digest) and by digest."""

    token = "anonymous-pull"
    current = NEW

    def _reply(self, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        host = self.headers.get("Host", "")
        if self.path == f"/storage/{CONFIG}":  # where the blob redirects: no registry token
            if "Authorization" in self.headers:  # as a signed storage URL refuses a second one
                self.send_response(400)
                self.send_header("Content-Length", "0")
                return self.end_headers()
            return self._reply({"config": {"Env": ["PATH=/usr/bin", "PYTHON_VERSION=3.11.99"]}})
        if self.path.startswith("/token?"):
            assert "scope=repository%3Apython%3Apull" in self.path
            return self._reply({"token": self.token})
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            realm = f'Bearer realm="http://{host}/token",service="test"'
            self.send_header("WWW-Authenticate", realm + ',scope="repository:python:pull"')
            self.send_header("Content-Length", "0")
            return self.end_headers()
        responses: dict[str, dict[str, object]] = {
            "/v2/python/manifests/3.11-slim": {},
            f"/v2/python/manifests/{self.current}": {
                "manifests": [
                    {"digest": "sha256:" + "9" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
                    {"digest": CHILD, "platform": {"os": "linux", "architecture": "amd64"}},
                ]
            },
            f"/v2/python/manifests/{CHILD}": {"config": {"digest": CONFIG}},
        }  # fmt: skip
        if self.path == f"/v2/python/blobs/{CONFIG}":
            self.send_response(307)
            self.send_header("Location", f"http://{host}/storage/{CONFIG}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path not in responses:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self._reply(responses[self.path], {"Docker-Content-Digest": self.current})

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _pin_images(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pin-images"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_pin_images_rewrites_a_stale_digest_and_its_note(registry: int, tmp_path: Path) -> None:
    image = f"127.0.0.1:{registry}/python:3.11-slim"
    dockerfile = tmp_path / "Dockerfile"
    text = f"# {image}, resolved 2026-01-01: Python 3.11.1\nARG BASE={image}@{OLD}\nFROM $BASE\n"
    dockerfile.write_text(text)

    stale = _pin_images("--check", str(dockerfile))
    assert stale.returncode == 1 and NEW in stale.stdout, stale.stdout + stale.stderr
    assert dockerfile.read_text() == text, "--check writes nothing"

    done = _pin_images(str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr
    today = datetime.date.today().isoformat()
    assert dockerfile.read_text() == (
        f"# {image}, resolved {today} by scripts/pin-images: Python 3.11.99\n"
        f"ARG BASE={image}@{NEW}\nFROM $BASE\n"
    )
    assert _pin_images("--check", str(dockerfile)).returncode == 0


def test_pin_images_writes_nothing_when_the_registry_does_not_answer(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Registry)
    port = int(server.server_address[1])
    server.server_close()  # a port with no listener
    dockerfile = tmp_path / "Dockerfile"
    text = f"FROM 127.0.0.1:{port}/python:3.11-slim@{OLD}\n"
    dockerfile.write_text(text)
    proc = _pin_images(str(dockerfile))
    assert proc.returncode == 2 and "not reachable" in proc.stderr
    assert dockerfile.read_text() == text
