"""Which tests run alone (scripts/test's serial pass) and which share the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import is_serial


class FakeItem:
    """Just what the rule reads of a pytest item: markers, fixtures, path."""

    def __init__(self, path: str, markers: tuple[str, ...] = (), fixtures: tuple[str, ...] = ()):
        self.path = Path(path)
        self.fixturenames = list(fixtures)
        self._markers = markers

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name in self._markers else None


@pytest.mark.parametrize(
    ("item", "serial"),
    [
        (FakeItem("tests/integration/faults/test_zombie.py", ("faults",)), True),
        (FakeItem("tests/integration/recorder/test_probes.py", (), ("stack_faults",)), True),
        (FakeItem("tests/integration/recorder/test_pipeline.py", (), ("stack",)), False),
        (FakeItem("tests/unit/test_readme.py"), False),
    ],
)
def test_tests_that_stop_services_run_alone(item: FakeItem, serial: bool) -> None:
    assert is_serial(item) is serial  # type: ignore[arg-type]


def test_tests_of_servers_that_cannot_be_split_run_alone() -> None:
    for item in (
        FakeItem("tests/environment/test_kubeconfig.py", ("k8s",)),
        FakeItem("/r/tests/integration/timescale/test_full_edition.py"),
    ):
        assert is_serial(item)  # type: ignore[arg-type]
