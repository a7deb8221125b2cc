"""What kube-controller-manager, kube-scheduler and kwok do on the control plane of scripts/k8s.

Owns the checks that Deployments roll out to Running pods and owner references are collected.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.k8s import K8s, wait_for
from tests.integration.k8s.manifests import data_recorder

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


def deployment(name: str, replicas: int, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    labels = {"app": name}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # kwok never pulls or runs the image; the pod only has to be valid.
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def _pods(k8s: K8s, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = k8s.get_json("pods", "-l", selector, namespace=namespace)["items"]
    return items


def test_deployment_gets_a_replicaset_and_running_pods_on_the_kwok_node(
    k8s: K8s, k8s_namespace: str
) -> None:
    k8s.apply(deployment("web", 2), k8s_namespace)

    def ready() -> bool:
        status = k8s.get_json("deploy", "web", namespace=k8s_namespace).get("status", {})
        return bool(status.get("readyReplicas") == 2 and status.get("availableReplicas") == 2)

    wait_for(ready, timeout=90, what="Deployment web to have 2 ready replicas")
    replicasets = k8s.get_json("rs", "-l", "app=web", namespace=k8s_namespace)["items"]
    assert len(replicasets) == 1
    assert replicasets[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    pods = _pods(k8s, k8s_namespace, "app=web")
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == "kwok-node-0"  # placed by kube-scheduler
        assert pod["status"]["phase"] == "Running"  # made so by kwok
        assert pod["status"]["podIP"].startswith("10.244.0.")
        assert pod["metadata"]["ownerReferences"][0]["name"] == replicasets[0]["metadata"]["name"]

    # A template change is a rollout: a second ReplicaSet takes over, the first scales to 0.
    k8s.kubectl("set", "image", "-n", k8s_namespace, "deploy/web", "main=registry.invalid/app:2")
    k8s.kubectl("rollout", "status", "-n", k8s_namespace, "deploy/web", "--timeout=90s",
                timeout=100)  # fmt: skip
    replicasets = k8s.get_json("rs", "-l", "app=web", namespace=k8s_namespace)["items"]
    by_image = {
        rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs["spec"]["replicas"]
        for rs in replicasets
    }
    assert by_image == {"registry.invalid/app:1": 0, "registry.invalid/app:2": 2}


def test_owned_deployment_is_garbage_collected_with_its_datarecorder(
    k8s: K8s, k8s_namespace: str
) -> None:
    k8s.apply(data_recorder("owner"), k8s_namespace)
    owner = k8s.get_json("datarecorder", "owner", namespace=k8s_namespace)
    k8s.apply(deployment("owned", 1, owner=owner), k8s_namespace)
    k8s.apply(deployment("bystander", 1), k8s_namespace)
    wait_for(
        lambda: _pods(k8s, k8s_namespace, "app=owned"), timeout=60, what="pods of Deployment owned"
    )

    k8s.kubectl(
        "delete", "-n", k8s_namespace, "datarecorder", "owner", "--wait=true", "--timeout=60s",
        timeout=70,  # longer than kubectl's own --timeout, so that kubectl says what it waited for
    )  # fmt: skip

    def collected() -> bool:
        names = k8s.kubectl("get", "-n", k8s_namespace, "deploy,rs,pods", "-o", "name").stdout
        return "owned" not in names

    wait_for(collected, timeout=90, what="the garbage collector to delete Deployment owned")
    # Only the owner's dependents go; an unrelated Deployment stays.
    k8s.get_json("deploy", "bystander", namespace=k8s_namespace)


def test_foreground_deletion_waits_for_dependents(k8s: K8s, k8s_namespace: str) -> None:
    k8s.apply(data_recorder("fg"), k8s_namespace)
    owner = k8s.get_json("datarecorder", "fg", namespace=k8s_namespace)
    k8s.apply(deployment("fg-child", 1, owner=owner), k8s_namespace)

    k8s.kubectl("delete", "-n", k8s_namespace, "datarecorder", "fg", "--cascade=foreground", "--wait=true",
                "--timeout=90s", timeout=100)  # fmt: skip
    # With foreground propagation the owner disappears only after its blocking dependents.
    gone = k8s.kubectl("get", "-n", k8s_namespace, "deploy", "fg-child", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_orphan_deletion_keeps_the_child_and_drops_the_reference(
    k8s: K8s, k8s_namespace: str
) -> None:
    k8s.apply(data_recorder("orph"), k8s_namespace)
    owner = k8s.get_json("datarecorder", "orph", namespace=k8s_namespace)
    k8s.apply(deployment("orph-child", 1, owner=owner), k8s_namespace)

    k8s.kubectl("delete", "-n", k8s_namespace, "datarecorder", "orph", "--cascade=orphan", "--wait=true",
                "--timeout=60s", timeout=70)  # fmt: skip
    child = k8s.get_json("deploy", "orph-child", namespace=k8s_namespace)
    assert not child["metadata"].get("ownerReferences"), json.dumps(child["metadata"])
