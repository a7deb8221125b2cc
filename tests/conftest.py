"""Suite-wide pytest configuration: which fixture plugins every test can use.

Add a plugin module under tests/fixtures/ and name it here.
"""

pytest_plugins = [
    "tests.fixtures.stack",
    "tests.fixtures.k8s",
]
