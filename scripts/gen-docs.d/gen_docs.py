"""The README's reference tables, generated from the one place each is defined.

Owns rendering `Settings.model_fields` (recorder/runtime/settings.py), the metrics of
recorder/runtime/metrics.py, the log events of recorder/runtime/telemetry.py and the DataRecorder CRD's schema
(crds/) as Markdown, and rewriting the marked sections of README.md; `--check` exits 1 when
README.md differs from its sources.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CRD = REPO / "crds" / "datarecorders.datarecorder.dev.yaml"
sys.path.insert(0, str(REPO))

MARK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) .*?-->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def _escape(text: str) -> str:
    """One table cell: one line, pipes escaped, and outside `code` spans `<`/`>` as entities
    (Markdown would take `<namespace>` for an HTML tag and show nothing)."""
    parts = " ".join(text.replace("|", "\\|").split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


# --- settings ------------------------------------------------------------------------------


def format_default(value: Any) -> str:
    """How a default reads in the table (what you would write in the environment)."""
    from pydantic import SecretStr

    if value is None:
        return "*(unset)*"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return f"`{text}`" if text else "*(empty)*"


def _allowed(annotation: Any) -> list[str]:
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            return [str(v) for v in typing.get_args(arg)]
    return []


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{word} {bound:,}" if isinstance(bound, int) else f"{word} {bound}")
    return ", ".join(parts)


def settings_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, in declaration order."""
    from recorder.runtime.settings import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        meaning = _escape(field.description or "")
        allowed = _allowed(field.annotation)
        if allowed:
            meaning += " One of " + ", ".join(f"`{a}`" for a in allowed) + "."
        bounds = _bounds(list(field.metadata))
        if bounds:
            meaning += f" Range: {bounds}."
        rows.append((name, format_default(field.default), meaning))
    return rows


def settings_table() -> str:
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{n}` | {d} | {m} |" for n, d, m in settings_rows()]
    return "\n".join(lines) + "\n"


# --- metrics -------------------------------------------------------------------------------


def metric_rows() -> list[tuple[str, str, str, str]]:
    """(exported series, type, labels, meaning) for every metric of recorder/runtime/metrics.py."""
    from prometheus_client.metrics import MetricWrapperBase

    from recorder.runtime import metrics

    rows: list[tuple[str, str, str, str]] = []
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind = value._name, value._type
        if kind == "counter":
            series = f"`{name}_total`"
        elif kind == "histogram":
            series = f"`{name}_bucket`, `_sum`, `_count`"
        else:
            series = f"`{name}`"
        labels = ", ".join(f"`{label}`" for label in value._labelnames) or "—"
        rows.append((series, str(kind), labels, _escape(value._documentation)))
    return rows


def metrics_table() -> str:
    lines = ["| Series | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| {s} | {t} | {lab} | {m} |" for s, t, lab, m in metric_rows()]
    return "\n".join(lines) + "\n"


# --- log events ----------------------------------------------------------------------------


def log_events_table() -> str:
    """One row per event of recorder/runtime/telemetry.py: its name, level, fields and metrics."""
    from recorder.runtime.telemetry import event_rows

    lines = ["| Event | Level | Fields | Metrics | Meaning |", "| --- | --- | --- | --- | --- |"]
    for name, level, fields, names, meaning in event_rows():
        field_cells = ", ".join(f"`{f}`" for f in fields.split(", ") if f) or "—"
        metric_cells = ", ".join(f"`{m}`" for m in names.split(", ") if m) or "—"
        lines.append(
            f"| `{name}` | {level} | {field_cells} | {metric_cells} | {_escape(meaning)} |"
        )
    return "\n".join(lines) + "\n"


# --- DataRecorder spec -----------------------------------------------------------------------


def _crd_spec_schema() -> Mapping[str, Any]:
    import yaml

    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage", True))
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def _type(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and "properties" not in node:
        return "map"
    return kind


def crd_rows() -> list[tuple[str, str, str, str]]:
    """(field, type, default, meaning) for every field of a DataRecorder's spec."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(node: Mapping[str, Any], path: str) -> None:
        required = set(node.get("required", []))
        for key, child in node.get("properties", {}).items():
            field = f"{path}.{key}"
            meaning = _escape(child.get("description", ""))
            if "enum" in child:
                meaning += " One of " + ", ".join(f"`{v}`" for v in child["enum"]) + "."
            if key in required:
                meaning = "**Required.** " + meaning
            default = format_default(child["default"]) if "default" in child else ""
            rows.append((field, _type(child), default, meaning.strip()))
            if child.get("type") == "object" and "properties" in child:
                walk(child, field)

    walk(_crd_spec_schema(), "spec")
    return rows


def crd_table() -> str:
    lines = ["| Field | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{f}` | {t} | {d} | {m} |" for f, t, d, m in crd_rows()]
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "metrics": metrics_table,
    "log-events": log_events_table,
    "datarecorder-spec": crd_table,
}


def render(readme: str) -> str:
    """README text with every marked section replaced by its generated table."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in SECTIONS:
            raise SystemExit(f"README.md: unknown generated section {name!r}")
        seen.add(name)
        return match.group(1) + SECTIONS[name]() + match.group(4)

    out = MARK.sub(replace, readme)
    missing = set(SECTIONS) - seen
    if missing:
        raise SystemExit(f"README.md lacks the generated sections {sorted(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = render(current)
    if wanted == current:
        print("README.md reference tables are up to date")
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), "README.md", "generated", lineterm=""
        )
        print("\n".join(diff))
        print("README.md is stale: run scripts/gen-docs", file=sys.stderr)
        return 1
    README.write_text(wanted)
    print("README.md reference tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
