"""Every Ray process the cluster files start uses token auth: the KubeRay RayJob like the
launcher YAMLs, its token from a Kubernetes Secret (never written in a manifest), and the
Secret documented in cluster/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
SECRET = {"name": "medbench-ray-token", "key": "auth_token"}


def containers(node: Any, where: str = "") -> list[tuple[str, dict]]:
    """(path, container) for every container of every pod template in the manifest."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "containers" and isinstance(value, list):
                found += [(f"{where}/{c.get('name')}", c) for c in value]
            else:
                found += containers(value, f"{where}/{key}")
    elif isinstance(node, list):
        for item in node:
            found += containers(item, where)
    return found


def test_every_rayjob_container_uses_token_auth_from_a_secret() -> None:
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    found = containers(job["spec"])
    names = {path.rsplit("/", 1)[1] for path, _ in found}
    assert {"ray-head", "ray-worker", "ray-job-submitter"} <= names, names
    for path, container in found:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", path
        token = env.get("RAY_AUTH_TOKEN")
        assert token is not None and "value" not in token, path  # never inline
        ref = token["valueFrom"]["secretKeyRef"]
        assert {k: ref[k] for k in ("name", "key")} == SECRET, path
        assert ref.get("optional", False) is False, path  # no Secret: the pod does not start
        assert not any(e.get("name") == "RAY_AUTH_MODE" and e.get("value") == "disabled"
                       for e in container.get("env", [])), path


def test_the_dashboard_is_open_to_the_pod_network_only_with_auth() -> None:
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    if head["rayStartParams"].get("dashboard-host", "127.0.0.1") != "127.0.0.1":
        (container,) = head["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_AUTH_MODE"] == "token"
    text = (CLUSTER / "rayjob.yaml").read_text()
    assert "auth_token:" not in text.replace("key: auth_token", "")  # no literal token


def test_launchers_and_rayjob_agree_on_token_auth() -> None:
    for name in ("aws.yaml", "gcp.yaml"):
        text = (CLUSTER / name).read_text()
        assert "RAY_AUTH_MODE=token" in text, name


def test_the_secret_is_documented() -> None:
    readme = (CLUSTER / "README.md").read_text()
    assert "kubectl create secret generic medbench-ray-token" in readme
    assert "--from-literal=auth_token=" in readme
    header = (CLUSTER / "rayjob.yaml").read_text().split("apiVersion:")[0]
    assert "medbench-ray-token" in header and "auth_token" in header
