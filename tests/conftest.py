"""Suite-wide pytest configuration: the fixture plugins every test can use, and which tests
may run side by side under pytest-xdist.

Add a plugin module under tests/fixtures/ and name it here.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.stack",
    "tests.fixtures.k8s",
]

# Tests that share one server which cannot be split per test run on one xdist worker, one
# after another (`--dist loadgroup`): the control plane's cluster-wide objects (CRDs, the
# Prometheus Operator) and the full TimescaleDB edition (PGlite: one shared session).
GROUPS = {"k8s": "k8s", "timescale/test_full_edition.py": "timescale-full"}


def group_of(item: pytest.Item) -> str | None:
    if item.get_closest_marker("k8s"):
        return GROUPS["k8s"]
    path = item.path.as_posix()
    return next((g for suffix, g in GROUPS.items() if path.endswith(suffix)), None)


def is_serial(item: pytest.Item) -> bool:
    """A test that stops or starts a shared service (every fault test, any test using the
    `stack_faults` fixture) would break the tests of other workers, and the fault tests'
    RSS and recovery-time bounds assume a machine not shared with them: such tests run in
    scripts/test's second, serial pass (`-m serial`)."""
    return bool(item.get_closest_marker("faults")) or "stack_faults" in getattr(
        item, "fixturenames", ()
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_serial(item):
            item.add_marker(pytest.mark.serial)
        group = group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
