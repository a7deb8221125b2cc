"""The kubeconfig and credentials scripts/k8s writes, as kubectl and the Python client use them.

Owns the checks that the control plane is the pinned release, serves TLS with its own CA, and
enforces RBAC (the admin is system:masters; anyone else gets only what is granted).
"""

from __future__ import annotations

import shutil

import pytest

from tests.fixtures.k8s import K8s

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


def test_python_client_sees_the_pinned_release(k8s: K8s) -> None:
    from kubernetes import client

    version = client.VersionApi(k8s.api_client()).get_code()
    assert version.git_version.startswith("v1.")
    assert version.git_version != "v0.0.0-master+$Format:%H$"  # stamped at build time
    if k8s.managed:
        assert version.git_version == "v1.37.2", "scripts/k8s.d/go.mod pins v1.37.2"
    nodes = client.CoreV1Api(k8s.api_client()).list_node().items
    assert [n.metadata.name for n in nodes] == ["kwok-node-0"]


def test_the_admin_is_a_cluster_admin_and_rbac_is_enforced(k8s: K8s, k8s_namespace: str) -> None:
    assert k8s.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"
    denied = k8s.kubectl(
        "--as=system:serviceaccount:" + k8s_namespace + ":default",
        "get", "secrets", "-n", k8s_namespace,
        check=False,
    )  # fmt: skip
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "cannot list resource" in denied.stderr


@pytest.mark.parametrize("binary", ["/usr/bin/kubectl", "kubectl"])
def test_other_kubectl_clients_can_use_the_kubeconfig(k8s: K8s, binary: str) -> None:
    import subprocess

    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"no {binary} on this machine")
    proc = subprocess.run(
        [path, "--kubeconfig", str(k8s.kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
