"""End to end on a real kind cluster: the manifests, the image, injection, capture, EDS.

The same steps as scripts/kind-e2e.sh, as tests: create a cluster from
kind-cluster.yaml (one control plane, two workers), build the control-plane
image and load it, `kubectl apply -k manifests/`, deploy the two sample apps of
manifests/samples/demo.yaml into a namespace labelled for injection, then check
that the pods were injected, that a plain call from frontend to backend:8080
crosses both sidecars, and that scaling backend changes the endpoints the
frontend's Envoy uses.  Requests are made from inside the frontend pod by
scripts/kind_probe.py.

Skipped, with the reason, where docker cannot reach an engine or kind or
kubectl is missing.  KIND_CLUSTER_NAME names the cluster (default: a fresh random
name); an existing cluster of that name is reused and kept, a created one is deleted
afterwards unless KEEP_KIND_CLUSTER=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from xds_server import __version__

REPO = Path(__file__).resolve().parent.parent
IMAGE = f"xds-server:{__version__}"
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
NAMESPACE = "mesh-demo"
ROLLOUT_TIMEOUT = "300s"
T = TypeVar("T")

pytestmark = [pytest.mark.kind, pytest.mark.timeout(2400)]


def _missing_prerequisites() -> list[str]:
    missing = [
        f"{tool} is not installed"
        for tool in ("docker", "kind", "kubectl")
        if not shutil.which(tool)
    ]
    if shutil.which("docker"):
        try:
            info = subprocess.run(
                ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
            )
        except subprocess.TimeoutExpired:
            missing.append("docker info timed out")
        else:
            if info.returncode != 0:
                last = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
                missing.append(f"docker cannot reach an engine ({last})")
    return missing


class Cluster:
    """A kind cluster reached through its own kubectl context."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.context = f"kind-{name}"

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 600) -> str:
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def kubectl(self, *argv: str, stdin: str | None = None, timeout: float = 600) -> str:
        return self.run("kubectl", "--context", self.context, *argv, stdin=stdin, timeout=timeout)

    def probe(self, *argv: str) -> dict[str, Any]:
        """Run scripts/kind_probe.py in the frontend app container."""
        output = self.kubectl(
            "exec", "-i", "-n", NAMESPACE, "deploy/frontend", "-c", "app", "--",
            "python", "-", *argv,
            stdin=(REPO / "scripts" / "kind_probe.py").read_text(),
            timeout=120,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(output)
        return result

    def backend_pods(self) -> dict[str, str]:
        """Running, not terminating backend pods: name -> the endpoint `IP:8080`."""
        pods = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app=backend", "-o", "json")
        return {
            pod["metadata"]["name"]: f"{pod['status']['podIP']}:8080"
            for pod in json.loads(pods)["items"]
            if pod["status"].get("podIP") and not pod["metadata"].get("deletionTimestamp")
        }


def eventually(check: Callable[[], T], *, timeout: float, what: str) -> T:
    """`check()`'s first result that does not raise AssertionError, within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout:.0f}s") from error
        time.sleep(2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    missing = _missing_prerequisites()
    if missing:
        pytest.skip(
            f"the kind e2e needs docker with an engine, kind and kubectl: {'; '.join(missing)}"
        )
    name = os.environ.get("KIND_CLUSTER_NAME") or f"xds-e2e-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(name)
    existing = cluster.run("kind", "get", "clusters").split()
    created = name not in existing
    if created:
        cluster.run(
            "kind", "create", "cluster", "--name", name,
            "--config", str(REPO / "kind-cluster.yaml"), "--wait", "180s",
            timeout=900,
        )  # fmt: skip
    try:
        version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]
        minor = int("".join(c for c in version["minor"] if c.isdigit()))
        assert minor >= 29, f"Kubernetes 1.{minor}: injection needs native sidecars (1.29+)"
        cluster.run("docker", "build", "-t", IMAGE, str(REPO), timeout=1200)
        cluster.run("kind", "load", "docker-image", IMAGE, "--name", name)
        pulled = subprocess.run(["docker", "pull", ENVOY_IMAGE], capture_output=True, check=False)
        if pulled.returncode == 0:  # else the nodes pull it themselves
            cluster.run("kind", "load", "docker-image", ENVOY_IMAGE, "--name", name)
        cluster.kubectl("apply", "-k", str(REPO / "manifests"))
        for deployment in ("xds-server", "mesh-injector"):
            cluster.kubectl(
                "rollout", "status", "-n", "mesh-system", f"deploy/{deployment}",
                f"--timeout={ROLLOUT_TIMEOUT}",
            )  # fmt: skip
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
        cluster.kubectl("label", "namespace", NAMESPACE, "mesh-injection=enabled", "--overwrite")
        cluster.kubectl(
            "apply", "-n", NAMESPACE, "-f", str(REPO / "manifests" / "samples" / "demo.yaml")
        )
        cluster.kubectl("scale", "-n", NAMESPACE, "deploy/backend", "--replicas=1")
        for deployment in ("backend", "frontend"):
            cluster.kubectl(
                "rollout", "status", "-n", NAMESPACE, f"deploy/{deployment}",
                f"--timeout={ROLLOUT_TIMEOUT}",
            )  # fmt: skip
        yield cluster
    finally:
        if created and os.environ.get("KEEP_KIND_CLUSTER") != "1":
            subprocess.run(["kind", "delete", "cluster", "--name", name], check=False, timeout=300)


def test_the_webhook_got_its_ca_bundle(cluster: Cluster) -> None:
    ca = cluster.kubectl(
        "get", "mutatingwebhookconfiguration", "mesh-sidecar-injector",
        "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}",
    )  # fmt: skip
    assert ca.strip(), "the injector did not patch the caBundle"


@pytest.mark.parametrize("app", ["backend", "frontend"])
def test_pods_in_the_labelled_namespace_are_injected(cluster: Cluster, app: str) -> None:
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"app={app}", "-o", "json")
    for pod in json.loads(pods)["items"]:
        names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert names == ["mesh-capture", "mesh-bootstrap", "mesh-proxy"]
        assert "sidecar.mesh.io/status" in pod["metadata"]["annotations"]
        statuses = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
        assert statuses["mesh-proxy"]["ready"] is True


def test_the_control_plane_namespace_is_not_injected(cluster: Cluster) -> None:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", "mesh-system", "-o", "json"))
    assert pods["items"]
    for pod in pods["items"]:
        assert not pod["spec"].get("initContainers"), pod["metadata"]["name"]


def test_a_plain_call_crosses_both_sidecars(cluster: Cluster) -> None:
    result = eventually(lambda: cluster.probe("requests", "10"), timeout=120, what="backend:8080")
    for answer in result["answers"]:
        # The backend's sidecar stamps its node id, POD_NAME.POD_NAMESPACE.
        assert answer["via"] == f"{answer['pod']}.{NAMESPACE}", result
    # ... and the frontend's own sidecar sent them (its stats for the backend cluster).
    assert result["sent_by_own_sidecar"] >= len(result["answers"]), result


def test_scaling_the_backend_changes_the_endpoints_envoy_uses(cluster: Cluster) -> None:
    for replicas in (3, 1):
        cluster.kubectl("scale", "-n", NAMESPACE, "deploy/backend", f"--replicas={replicas}")
        cluster.kubectl(
            "rollout", "status", "-n", NAMESPACE, "deploy/backend", f"--timeout={ROLLOUT_TIMEOUT}"
        )

        def envoy_follows(replicas: int = replicas) -> dict[str, str]:
            pods = cluster.backend_pods()
            assert len(pods) == replicas, pods
            used = cluster.probe("endpoints")["endpoints"]
            assert used == sorted(pods.values()), f"Envoy uses {used}, the backend pods are {pods}"
            return pods

        pods = eventually(envoy_follows, timeout=180, what=f"{replicas} backend endpoints")
        answers = cluster.probe("requests", "30")["answers"]
        assert {answer["pod"] for answer in answers} == set(pods), answers
