"""What survives between `scripts/stack` invocations: the state directory and a service's state.

Owns the layout of `.stack/` (a folder and a state.json per service, the env file, the leases)
and the lock that serialises `stack` commands on one state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recorder.devstack import procs
from recorder.devstack.procs import ServiceError

# The checkout this library lives in (scripts/ beside recorder/): `scripts/stack` sets
# DATARECORDER_STACK_DIR itself; the default serves a `python -m recorder.devstack.stack.cli`.
REPO = Path(__file__).resolve().parents[3]
STATE = Path(os.environ.get("DATARECORDER_STACK_DIR") or REPO / ".stack").resolve()
ENV_FILE = STATE / "env"
LEASES = STATE / "leases"
OWNER = STATE / "owner"


@dataclass
class ServiceState:
    """One service's saved facts (ports, paths, pids), in `.stack/<name>/state.json`."""

    name: str
    data: dict[str, object]

    @property
    def dir(self) -> Path:
        return STATE / self.name

    @property
    def file(self) -> Path:
        return self.dir / "state.json"

    @classmethod
    def load(cls, name: str) -> ServiceState:
        path = STATE / name / "state.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return cls(name, data)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.file)

    @property
    def configured(self) -> bool:
        return bool(self.data.get("configured"))

    def get_int(self, key: str) -> int:
        value = self.data.get(key)
        if not isinstance(value, int):
            raise ServiceError(f"{self.name}: state has no {key}; run `scripts/stack down`")
        return value

    def get_str(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise ServiceError(f"{self.name}: state has no {key}; run `scripts/stack down`")
        return value

    def pid(self, key: str, marker: str) -> int | None:
        """The recorded pid if that process still runs our program (spawned by this process,
        or `marker` in its command line): after a reboot the number may belong to someone
        else, who must not be signalled."""
        value = self.data.get(key)
        if not isinstance(value, int):
            return None
        return value if procs.runs(value, marker) else None

    def recorded_pid(self, key: str) -> int | None:
        """The pid recorded under `key`, alive or not (for its exit status)."""
        value = self.data.get(key)
        return value if isinstance(value, int) else None


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise `stack` commands on one state dir (parallel pytest sessions share one stack)."""
    with procs.locked(STATE / "lock"):
        yield
