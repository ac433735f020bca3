"""Sidecar injection: manifests in, the exact injected manifests out (golden files).

Each `tests/golden/inject-*.in.yaml` is injected with the default configuration and
compared byte for byte with its `.out.yaml`.  To accept a deliberate change, regenerate
them with `UPDATE_GOLDEN=1 pytest tests/test_inject.py` and review the diff.

Beyond the goldens: injection is idempotent and deterministic, opt-outs and host-network
pods are left alone, conflicts are refused by name, the output is valid Kubernetes (the
official client's strict models), and the injected init containers run: their arguments
parse with the real `xds-server` commands, and the bootstrap step, given downward-API
values, renders a bootstrap Envoy accepts, whose readiness listener the kubelet can probe.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import EnvoyFactory
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes.client import models as k8s

from xds_server import cli
from xds_server.app import ControlPlane
from xds_server.ca import CertificateAuthority
from xds_server.envoy_process import envoy_binary, validate_bootstrap
from xds_server.inject import (
    STATUS_ANNOTATION,
    InjectionConfig,
    InjectionError,
    inject_object,
    inject_pod,
    inject_yaml,
)
from xds_server.inject.pod_bootstrap import (
    ROOTS_DIR,
    TOKEN_DIR,
    parse_downward_labels,
    render_pod_bootstrap,
    workload_name,
)
from xds_server.inject.sidecar import (
    ENVOY_VERSION,
    PROXY_IMAGE,
    bootstrap_container,
    capture_container,
    proxy_container,
)
from xds_server.settings import DebounceSettings, SecuritySettings, Settings

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_INPUTS = sorted(GOLDEN.glob("inject-*.in.yaml"))
MODELS: dict[str, Any] = {
    "Pod": k8s.V1Pod,
    "Deployment": k8s.V1Deployment,
    "StatefulSet": k8s.V1StatefulSet,
    "DaemonSet": k8s.V1DaemonSet,
    "CronJob": k8s.V1CronJob,
    "Service": k8s.V1Service,
}

needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="envoy is not on PATH")


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]},
    }
    base["spec"].update(spec)
    return base


# -- golden files ---------------------------------------------------------------------


@pytest.mark.parametrize("source", GOLDEN_INPUTS, ids=lambda path: path.name)
def test_injection_matches_the_golden_file(source: Path) -> None:
    expected_path = source.with_name(source.name.replace(".in.yaml", ".out.yaml"))
    injected, _ = inject_yaml(source.read_text(), InjectionConfig())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(injected)
    assert expected_path.exists(), "no golden file; run with UPDATE_GOLDEN=1 to create it"
    assert injected == expected_path.read_text()


def test_the_golden_deployment_gets_the_mesh_first_and_keeps_the_app_as_it_was() -> None:
    source = yaml.safe_load((GOLDEN / "inject-deployment.in.yaml").read_text())
    injected = yaml.safe_load((GOLDEN / "inject-deployment.out.yaml").read_text())
    spec = injected["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [
        "mesh-capture",
        "mesh-bootstrap",
        "mesh-proxy",
        "migrate",
    ]
    assert spec["containers"] == source["spec"]["template"]["spec"]["containers"]
    assert [v["name"] for v in spec["volumes"]] == [
        "cache",
        "mesh-bootstrap",
        "mesh-podinfo",
        "mesh-xds-token",
        "mesh-xds-roots",
    ]
    annotations = injected["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert STATUS_ANNOTATION in annotations
    untouched = copy.deepcopy(injected)
    untouched["spec"]["template"] = source["spec"]["template"]
    assert untouched == source, "only the pod template changes"


@pytest.mark.parametrize("source", GOLDEN_INPUTS, ids=lambda path: path.name)
def test_injected_manifests_are_valid_kubernetes_objects(source: Path) -> None:
    injected, _ = inject_yaml(source.read_text(), InjectionConfig())
    for document in yaml.safe_load_all(injected):
        # Strict: unknown fields, wrong types and missing required fields all raise.
        MODELS[document["kind"]].model_validate(document)


def test_the_inject_command_writes_the_injected_manifests_and_reports_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = GOLDEN / "inject-workloads.in.yaml"
    output = tmp_path / "out.yaml"
    assert cli.main(["inject", "-f", str(source), "-o", str(output)]) == 0
    assert output.read_text() == (GOLDEN / "inject-workloads.out.yaml").read_text()
    skipped = capsys.readouterr().err.splitlines()
    assert skipped == [
        "xds-server inject: skipped Deployment/legacy: opted out with the label "
        'sidecar.mesh.io/inject: "false"',
        "xds-server inject: skipped DaemonSet/node-agent: uses the host network",
    ]


def test_the_inject_command_fails_clearly_on_a_bad_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nspec:\n  containers:\n  - name: mesh-proxy\n")
    assert cli.main(["inject", "-f", str(bad)]) == 1
    assert "Pod/?: container name(s) mesh-proxy are reserved" in capsys.readouterr().err


# -- idempotence, determinism, skipping -------------------------------------------------


@pytest.mark.parametrize("source", GOLDEN_INPUTS, ids=lambda path: path.name)
def test_injecting_twice_is_injecting_once(source: Path) -> None:
    once, _ = inject_yaml(source.read_text(), InjectionConfig())
    twice, outcomes = inject_yaml(once, InjectionConfig())
    assert twice == once
    assert all(not outcome.decision.inject for outcome in outcomes)


def test_injection_is_deterministic_and_does_not_mutate_its_input() -> None:
    original = pod(volumes=[{"name": "data", "emptyDir": {}}])
    before = copy.deepcopy(original)
    first, _ = inject_pod(original, InjectionConfig())
    second, _ = inject_pod(original, InjectionConfig())
    assert original == before
    assert yaml.safe_dump(first, sort_keys=False) == yaml.safe_dump(second, sort_keys=False)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"labels": {"sidecar.mesh.io/inject": "false"}}, "opted out with the label"),
        ({"annotations": {"sidecar.mesh.io/inject": "false"}}, "opted out with the annotation"),
        ({"annotations": {"sidecar.mesh.io/inject": False}}, "opted out with the annotation"),
        ({"annotations": {"sidecar.mesh.io/inject": "FALSE"}}, "opted out with the annotation"),
        ({"annotations": {STATUS_ANNOTATION: "{}"}}, "already injected"),
        ({"hostNetwork": True}, "uses the host network"),
    ],
)
def test_pods_that_opt_out_or_cannot_be_captured_are_left_alone(
    change: dict[str, Any], reason: str
) -> None:
    original = pod()
    if "hostNetwork" in change:
        original["spec"].update(change)
    else:
        for key, values in change.items():
            original["metadata"].setdefault(key, {}).update(values)
    injected, decision = inject_pod(original, InjectionConfig())
    assert injected == original
    assert not decision.inject
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"containers": [{"name": "mesh-proxy", "image": "x"}]}, "mesh-proxy are reserved"),
        (
            {"containers": [{"name": "app", "image": "x"}], "volumes": [{"name": "mesh-podinfo"}]},
            "mesh-podinfo are reserved",
        ),
        (
            {"containers": [{"name": "app", "image": "x", "ports": [{"containerPort": 15021}]}]},
            "declares port 15021",
        ),
        ({"containers": "app"}, "spec.containers must be a list"),
    ],
)
def test_pods_that_clash_with_the_sidecar_are_refused_by_name(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(InjectionError, match=message):
        inject_pod({"metadata": {}, "spec": spec}, InjectionConfig())


def test_an_error_in_a_manifest_names_the_workload() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "mesh-proxy"}]}}},
    }
    with pytest.raises(InjectionError, match="Deployment/shop/api: container name"):
        inject_object(deployment, InjectionConfig())


def test_a_list_is_injected_item_by_item() -> None:
    injected, outcomes = inject_object({"kind": "List", "items": [pod(), pod()]}, InjectionConfig())
    assert [outcome.decision.inject for outcome in outcomes] == [True, True]
    assert all(STATUS_ANNOTATION in item["metadata"]["annotations"] for item in injected["items"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"health_port": 15000}, "ports must differ"),
        ({"exclude_inbound_ports": (15020,)}, "must be excluded from inbound capture"),
        ({"proxy_uid": 0}, "non-root"),
        ({"outbound_port": 70000}, "not a port number"),
    ],
)
def test_an_inconsistent_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InjectionConfig(**kwargs)


# -- the injected containers ----------------------------------------------------------


def test_the_proxy_is_a_native_sidecar_of_the_tested_envoy_as_the_proxy_uid() -> None:
    proxy = proxy_container(InjectionConfig())
    assert proxy["image"] == PROXY_IMAGE == "envoyproxy/envoy:v1.40.0"
    assert proxy["restartPolicy"] == "Always"
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["args"][:3] == ["-c", "/etc/envoy/bootstrap.yaml", "--disable-hot-restart"]
    assert proxy["startupProbe"]["httpGet"] == {"path": "/ready", "port": 15021}
    capture = capture_container(InjectionConfig())
    assert capture["securityContext"]["capabilities"] == {
        "add": ["NET_ADMIN", "NET_RAW"],
        "drop": ["ALL"],
    }


@needs_envoy
def test_the_image_tag_is_the_envoy_version_we_test_with() -> None:
    binary = envoy_binary()
    assert binary is not None
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert f"/{ENVOY_VERSION}/" in output.stdout


def test_the_capture_step_runs_the_agreed_capture_init_command() -> None:
    capture = capture_container(InjectionConfig())
    assert capture["command"] == ["xds-server"]
    assert capture["args"] == [
        "capture-init",
        "--outbound-port", "15001",
        "--inbound-port", "15006",
        "--proxy-uid", "1337",
        "--exclude-outbound-ports", "15010,15014",
        "--exclude-inbound-ports", "15020,15021",
    ]  # fmt: skip
    if "capture-init" not in cli.PLUGIN_COMMANDS:
        pytest.skip("the capture-init command is not registered in this tree")
    # The real parser accepts exactly these flags (argparse exits on an unknown one).
    cli._parser().parse_args(capture["args"])


def _run_bootstrap_step(
    tmp_path: Path, config: InjectionConfig, env: dict[str, str], labels: str
) -> str:
    """Run the injected bootstrap container's command line as the kubelet would."""
    container = bootstrap_container(config)
    mounts = {mount["mountPath"]: tmp_path / mount["name"] for mount in container["volumeMounts"]}
    for directory in mounts.values():
        directory.mkdir()
    (mounts["/etc/mesh/podinfo"] / "labels").write_text(labels)
    if TOKEN_DIR in mounts:  # what the kubelet projects and mounts from the ConfigMap
        (mounts[TOKEN_DIR] / "token").write_text("a-projected-token")
        root = CertificateAuthority.generate_root("cluster.local").trust_anchor
        (mounts[ROOTS_DIR] / "root-cert.pem").write_bytes(root.public_bytes(Encoding.PEM))
    args = []
    for arg in container["args"]:
        for mount_path, directory in mounts.items():
            arg = arg.replace(mount_path, str(directory))
        args.append(arg)
    declared = {item["name"] for item in container["env"]}
    assert declared == set(env), "the test gives every downward-API variable the pod declares"
    result = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return (mounts["/etc/envoy"] / "bootstrap.yaml").read_text()


POD_ENV = {
    "POD_NAME": "reviews-7d9f8c6b5-x7k2p",
    "POD_NAMESPACE": "shop",
    "INSTANCE_IP": "10.244.1.7",
    "SERVICE_ACCOUNT": "reviews",
}
POD_LABELS = 'app="reviews"\npod-template-hash="7d9f8c6b5"\nversion="v2"\n'


def test_the_bootstrap_step_identifies_the_pod_from_the_downward_api(tmp_path: Path) -> None:
    bootstrap = yaml.safe_load(
        _run_bootstrap_step(tmp_path, InjectionConfig(), POD_ENV, POD_LABELS)
    )
    node = bootstrap["node"]
    assert node["id"] == "reviews-7d9f8c6b5-x7k2p.shop"
    assert node["cluster"] == "reviews.shop"
    assert node["metadata"]["NAMESPACE"] == "shop"
    assert node["metadata"]["SERVICE_ACCOUNT"] == "reviews"
    assert node["metadata"]["INSTANCE_IP"] == "10.244.1.7"
    assert node["metadata"]["INTERCEPTION_MODE"] == "REDIRECT"
    assert node["metadata"]["LABELS"]["version"] == "v2"
    (xds,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster"]
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {
        "address": "xds-server.mesh-system.svc",
        "port_value": 15010,
    }
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@needs_envoy
def test_envoy_accepts_the_bootstrap_the_pod_renders(tmp_path: Path) -> None:
    text = _run_bootstrap_step(tmp_path, InjectionConfig(delta=True), POD_ENV, POD_LABELS)
    path = tmp_path / "checked.yaml"
    path.write_text(text)
    validate_bootstrap(path)


@pytest.mark.parametrize(
    ("pod_name", "labels", "workload"),
    [
        ("reviews-7d9f8c6b5-x7k2p", {"app": "api", "pod-template-hash": "7d9f8c6b5"}, "api"),
        ("reviews-7d9f8c6b5-x7k2p", {"app.kubernetes.io/name": "reviews", "app": "r"}, "reviews"),
        ("reviews-7d9f8c6b5-x7k2p", {"pod-template-hash": "7d9f8c6b5"}, "reviews"),
        ("db-2", {"statefulset.kubernetes.io/pod-name": "db-2"}, "db"),
        ("report-28100000-abcde", {"job-name": "report-28100000"}, "report-28100000"),
        ("agent-x7k2p", {"controller-revision-hash": "5c9d"}, "agent"),
        ("standalone", {}, "standalone"),
    ],
)  # fmt: skip
def test_the_workload_is_named_from_what_the_pod_can_see(
    pod_name: str, labels: dict[str, str], workload: str
) -> None:
    assert workload_name(pod_name, labels) == workload


def test_downward_api_labels_are_parsed_and_garbage_is_refused() -> None:
    assert parse_downward_labels('a="1"\n\nb.io/c="x-y_z"\n') == {"a": "1", "b.io/c": "x-y_z"}
    with pytest.raises(ValueError, match="line 1"):
        parse_downward_labels("a=1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pod_name": ""}, "pod name and namespace are required"),
        ({"pod_ip": ""}, "is not an IP address"),
        ({"health_port": 15000}, "must differ"),
    ],
)
def test_the_bootstrap_step_fails_clearly_without_its_inputs(
    kwargs: dict[str, Any], message: str
) -> None:
    values: dict[str, Any] = {
        "pod_name": "web-0",
        "namespace": "shop",
        "pod_ip": "10.0.0.1",
        "service_account": "web",
        "xds_address": "xds-server.mesh-system.svc:15010",
    } | kwargs
    with pytest.raises(ValueError, match=message):
        render_pod_bootstrap(**values)


# -- the readiness listener, on a real Envoy --------------------------------------------


async def _ready_status(port: int, method: str = "GET", path: str = "/ready") -> int:
    async with httpx.AsyncClient(timeout=2.0) as client:
        response = await client.request(method, f"http://127.0.0.1:{port}{path}")
        return response.status_code


@needs_envoy
async def test_the_kubelet_sees_ready_only_once_envoy_has_its_config(
    envoy_factory: EnvoyFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    xds_port, health_port = free_port(), free_port()
    bootstrap = render_pod_bootstrap(
        pod_name="web-0",
        namespace="default",
        pod_ip="127.0.0.1",
        service_account="default",
        xds_address=f"127.0.0.1:{xds_port}",
        admin_port=free_port(),
        health_port=health_port,
        outbound_port=free_port(),
        inbound_port=free_port(),
    )
    assert (
        yaml.safe_load(bootstrap)["dynamic_resources"]["cds_config"]["initial_fetch_timeout"]
        == "0s"
    )
    envoy = envoy_factory(bootstrap, name="injected", start=False)
    await envoy.start_async()

    async def status() -> int:
        return await _ready_status(health_port)

    # No control plane yet: Envoy binds no listener before its first config arrives, so
    # the kubelet's probe is refused, however long it waits.
    await asyncio.sleep(1.0)
    with pytest.raises(httpx.ConnectError):
        await status()

    plane = ControlPlane(
        Settings(
            source=f"file:{REPO / 'examples'}",
            xds_listen=f"127.0.0.1:{xds_port}",
            admin_listen=f"127.0.0.1:{free_port()}",
            debounce=DebounceSettings(quiet=0.02, max_delay=0.2, endpoint_quiet=0.005),
            grace_seconds=0.2,
            # Readiness, not authentication, is under test: plaintext xDS.
            security=SecuritySettings(insecure_xds=True, ca_dir=tmp_path / "ca"),
        )
    )
    task = asyncio.create_task(plane.run())
    try:
        assert await _eventually(status, lambda code: code == 200, within=30) == 200
        # Only GET /ready goes through; the rest of the admin API stays on loopback.
        assert await _ready_status(health_port, path="/stats") == 404
        assert await _ready_status(health_port, path="/quitquitquit", method="POST") == 404
        assert await _ready_status(health_port, method="POST") == 404
        assert envoy.is_running
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _eventually(
    probe: Callable[[], Any], accept: Callable[[int], bool], within: float = 15.0
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: object = None
    while loop.time() < deadline:
        try:
            last = await probe()
        except httpx.HTTPError as error:
            last = error
        else:
            if isinstance(last, int) and accept(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"readiness not as expected within {within}s: {last!r}")
