"""The checks a contributor runs are CI's: pre-commit's hooks are scripts/test's commands, and
the documents name files that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def script_checks() -> set[str]:
    """The tool invocations of scripts/test's static-check section (before pytest)."""
    text = (ROOT / "scripts" / "test").read_text().split('echo "== pytest')[0]
    found = set()
    for line in text.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part.strip(), comments=True) if part.strip() else []
            if words and words[0] in ("ruff", "mypy", "lint-imports"):
                found.add(" ".join(words))
    return found


def hook_commands() -> set[str]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    out = set()
    for repo in config["repos"]:
        for hook in repo["hooks"]:
            words = shlex.split(hook["entry"]) + list(hook.get("args", []))
            out.add(" ".join([Path(words[0]).name, *words[1:]]))
    return out


def test_pre_commit_runs_exactly_the_checks_of_scripts_test() -> None:
    assert script_checks(), "no checks found in scripts/test"
    assert hook_commands() == script_checks()


def test_contributing_names_only_paths_that_exist_or_are_marked_new() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    for row in text.splitlines():
        if "*(new)*" in row:
            continue
        for path in re.findall(r"`((?:recorder|operator|tests|scripts|bench)/[\w./-]+)`", row):
            if "<" in path or "*" in path:
                continue
            assert (ROOT / path.split("::")[0]).exists(), f"CONTRIBUTING.md names {path}"


OPERATOR = "operator/datarecorder_operator/"


def code_map_modules(text: str, folder: str) -> set[str]:
    """The bare module names (`spec.py`) a code map row gives in parentheses after `folder`."""
    names: set[str] = set()
    for row in text.splitlines():
        if f"`{folder}`" not in row:
            continue
        names.update(re.findall(r"`([\w]+\.py)`", row.split(f"`{folder}`", 1)[1]))
    return names


def test_the_code_map_names_every_operator_module_and_only_those() -> None:
    named = code_map_modules((ROOT / "CONTRIBUTING.md").read_text(), OPERATOR)
    present = {p.name for p in (ROOT / OPERATOR).glob("*.py")} - {"__init__.py", "__main__.py"}
    assert named - present == set(), "CONTRIBUTING.md names operator modules that do not exist"
    assert present - named == set(), "operator modules missing from CONTRIBUTING.md's code map"
