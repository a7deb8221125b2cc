"""The DataRecorders of examples/: which are valid, and who refuses each invalid one.

Owns reading an invalid example's first line (it says who refuses it: the CRD's schema, a CEL
rule of the CRD, or the operator), for the unit tests and the control-plane tests alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))

RefusedBy = Literal["schema", "cel", "operator"]
_HEADERS: dict[str, RefusedBy] = {
    "# Rejected by the schema": "schema",
    "# Rejected by a CEL rule": "cel",
    "# Accepted by the schema": "operator",
}


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        doc: dict[str, Any] = yaml.safe_load(fh)
    return doc


def refused_by(path: Path) -> RefusedBy:
    """Who refuses the invalid example at `path`, as its first line says."""
    header = path.read_text(encoding="utf-8").splitlines()[0]
    for start, who in _HEADERS.items():
        if header.startswith(start):
            return who
    raise ValueError(f"{path.name}: first line must say who rejects it, got {header!r}")
