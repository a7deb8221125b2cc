"""Shared helpers of the packaging tests: repository paths, a Dockerfile reader, .dockerignore.

Owns the small parsers the tests need to read Dockerfile and .dockerignore without Docker.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def check_chart() -> ModuleType:
    """helm/check_chart.py as a module (helm/ is not a package)."""
    spec = importlib.util.spec_from_file_location("check_chart", ROOT / "helm" / "check_chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_chart"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        name, _, args = full.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


def dockerfile_stages(text: str) -> list[Stage]:
    """Build stages with their base images resolved from the global ARG defaults."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for name, rest in dockerfile_instructions(text):
        if name == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif name == "FROM":
            words = rest.split()
            base = words[0]
            for key, value in args.items():
                base = base.replace("${" + key + "}", value).replace("$" + key, value)
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif stages:
            stages[-1].instructions.append((name, rest))
    return stages


def exec_form(args: str) -> list[str]:
    """The argv of an exec-form (JSON array) instruction such as ENTRYPOINT or CMD."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def shell_words(args: str) -> list[str]:
    return shlex.split(args)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def excluded(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a context path: the last matching pattern wins; `!` re-includes.

    A pattern matches the path itself or one of its parent directories; `**/` matches any
    depth. This covers the forms our .dockerignore uses (an allow-list), not all of Docker's.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!")
        # fnmatch's `*` also crosses `/`, so `**/x` becomes "x at the top or below a dir".
        globs = [glob[3:], "*/" + glob[3:]] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(p, g) for p in prefixes for g in globs):
            verdict = not negate
    return verdict


def build_context(dest: Path) -> list[str]:
    """Copy what `docker build` would send (per .dockerignore) into dest; the copied paths.

    Excluded directories are not descended into, which is right for an allow-list whose
    re-includes (`!name`) are top-level names, and keeps .venv and .stack out of the walk.
    """
    patterns = dockerignore_patterns()
    copied = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            rel = (here / name).relative_to(ROOT).as_posix()
            if excluded(rel, patterns):
                continue
            if (here / name).is_symlink():
                filenames.append(name)  # copied as a link below, like Docker does
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(ROOT).as_posix()
            if excluded(rel, patterns):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                target.symlink_to(path.readlink())
            else:
                target.write_bytes(path.read_bytes())
            copied.append(rel)
    return copied
