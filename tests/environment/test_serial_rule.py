"""Which tests run alone (scripts/test's serial pass) and which share an xdist worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import group_of, is_serial


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


def test_shared_servers_keep_their_tests_on_one_worker() -> None:
    assert group_of(FakeItem("tests/environment/test_kubeconfig.py", ("k8s",))) == "k8s"  # type: ignore[arg-type]
    full = FakeItem("/r/tests/integration/timescale/test_full_edition.py")
    assert group_of(full) == "timescale-full"  # type: ignore[arg-type]
    assert group_of(FakeItem("tests/integration/recorder/test_pipeline.py")) is None  # type: ignore[arg-type]
