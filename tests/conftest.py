"""Suite-wide pytest configuration: the fixture plugins every test can use, and which tests
may run side by side under pytest-xdist.

Add a plugin module under tests/fixtures/ and name it here.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Generated tests explore new inputs on every local run; in CI (CI=true) they draw the same
# examples every time, so a run's outcome depends on the code alone (a new finding shows up
# locally first, not as a landing refused at random).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

pytest_plugins = [
    "tests.fixtures.stack",
    "tests.fixtures.iceberg_rest",
    "tests.fixtures.k8s",
]

# Servers that cannot be split per test: the control plane's cluster-wide objects (CRDs, the
# Prometheus Operator) and the full TimescaleDB edition (PGlite: one shared session). Their
# tests would belong on one xdist worker (`xdist_group` + `--dist loadgroup`), but with
# pytest 9.2 and pytest-xdist 3.8 (the newest) loadgroup has no effect: xdist tags the group
# onto `item._nodeid`, which pytest 9 no longer reads. So they run in the serial pass.
SHARED_SERVER_FILES = ("timescale/test_full_edition.py",)


def uses_a_shared_server(item: pytest.Item) -> bool:
    if item.get_closest_marker("k8s"):
        return True
    return item.path.as_posix().endswith(SHARED_SERVER_FILES)


def is_serial(item: pytest.Item) -> bool:
    """A test that stops or starts a shared service (every fault test, any test using the
    `stack_faults` fixture) would break the tests of other workers, and the fault tests'
    RSS and recovery-time bounds assume a machine not shared with them; tests of a server
    that cannot be split per test cannot share it either. Such tests run in scripts/test's
    second, serial pass (`-m serial`)."""
    return (
        bool(item.get_closest_marker("faults"))
        or "stack_faults" in getattr(item, "fixturenames", ())
        or uses_a_shared_server(item)
    )


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks each test as it is collected, before `-m` deselects by the mark."""
    if is_serial(item):
        item.add_marker(pytest.mark.serial)
