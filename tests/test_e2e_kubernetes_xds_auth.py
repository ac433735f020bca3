"""End to end in Kubernetes mode: injected sidecars prove themselves with projected tokens.

An in-process control plane watches an emulated API server (kmock) that also
answers TokenReview, as the real one does for projected ServiceAccount tokens:
each known token names its service account and the Pod it is bound to.  The
control plane publishes the trust bundle as the ConfigMap the injector mounts
(`xds-server-root-cert`); the test plays the kubelet, writing the ConfigMap's
data and the Pod's token where the injected `mesh-bootstrap` step reads them,
and runs that step's command (`xds-server sidecar-bootstrap`, with the flags the
injector gives it).  Real Envoys are started from the result.

A sidecar with its own Pod's token gets its config; one with a forged token,
with another Pod's token, or with none never gets a stream, and the control
plane logs each refusal.  A root rotation rewrites the ConfigMap, and a running
sidecar trusts the new roots once the kubelet refreshes its mounted copy (a rename in
the volume, which Envoy's watched directory notices), without a restart.
"""

from __future__ import annotations

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported
import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import kmock
import pytest
import yaml

pytest.register_assert_rewrite("kube_fixtures")

from conftest import EnvoyFactory
from e2e_mesh import Sidecar, eventually, plane_settings
from kmock._internal import rendering
from kube_fixtures import (
    PLANE_KUBERNETES,
    ApiServerEmulator,
    _key,
    endpoint_slice,
    pod,
    service,
)

from xds_server import cli
from xds_server.app import ControlPlane
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess
from xds_server.inject.pod_bootstrap import token_client_tls
from xds_server.inject.sidecar import InjectionConfig, bootstrap_container
from xds_server.sample_app import start_sample_app
from xds_server.security.root_publisher import ROOT_CERT_KEY, ROOT_CONFIGMAP
from xds_server.settings import SecuritySettings

pytest_plugins = ("kube_fixtures",)

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(150)]

NAMESPACE = "shop"
CONFIGMAPS = ("", "v1", "configmaps")
TOKEN_REVIEWS = ("authentication.k8s.io", "v1", "tokenreviews")
AUDIENCE = "xds-server"
WEB_IP, CLIENT_IP, BACKEND_APP = "127.0.43.1", "127.0.43.2", "127.0.43.3"
TOKENS = {
    "token-of-web-0": ("web", "web-0"),
    "token-of-client-0": ("client", "client-0"),
}
"""Token -> (service account, Pod it is bound to), in NAMESPACE: what the API knows."""


def review(spec: dict[str, Any]) -> dict[str, Any]:
    """The API server's answer to a TokenReview of `spec`."""
    known = TOKENS.get(spec.get("token", ""))
    if known is None or AUDIENCE not in spec.get("audiences", []):
        status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
    else:
        account, pod_name = known
        status = {
            "authenticated": True,
            "audiences": [AUDIENCE],
            "user": {
                "username": f"system:serviceaccount:{NAMESPACE}:{account}",
                "extra": {"authentication.kubernetes.io/pod-name": [pod_name]},
            },
        }
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": spec,
        "status": status,
    }


class ReviewingApiServer(ApiServerEmulator):
    """The emulator, answering TokenReview (a create that stores nothing)."""

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.method == "POST" and _key(request) == TOKEN_REVIEWS:
            spec = request.data.get("spec", {}) if isinstance(request.data, dict) else {}
            return aiohttp.web.json_response(review(spec), status=201)
        return await super()._handle(request)


@pytest.fixture
async def api_server() -> AsyncIterator[ApiServerEmulator]:
    async with ReviewingApiServer() as emulator, kmock.Server(emulator):
        try:
            yield emulator
        finally:
            emulator.end_watches()


@pytest.fixture
async def plane(
    api_server: ApiServerEmulator,
    kubeconfig: Path,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> AsyncIterator[ControlPlane]:
    """Kubernetes mode with its defaults: xDS over TLS, proxies proven by token."""
    for name, ip, account in (("web-0", WEB_IP, "web"), ("client-0", CLIENT_IP, "client")):
        labels = {"app": name.partition("-")[0]}
        api_server.create(
            pod(name, ip, namespace=NAMESPACE, labels=labels, service_account=account)
        )
    settings = plane_settings(
        "kubernetes",
        free_port,
        kubernetes=dataclasses.replace(PLANE_KUBERNETES, kubeconfig=kubeconfig),
        security=SecuritySettings(admin_token_file=tmp_path / "admin-token"),
    )
    assert settings.security.client_auth(settings.source_kind) == "token"
    started = ControlPlane(settings)
    task = asyncio.create_task(started.run())
    await asyncio.wait_for(started.started.wait(), timeout=15)
    yield started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=15)


async def published_roots(api: ApiServerEmulator, namespace: str = NAMESPACE) -> str | None:
    found = api.objects_of(CONFIGMAPS).get((namespace, ROOT_CONFIGMAP))
    return None if found is None else str(found["data"][ROOT_CERT_KEY])


@dataclasses.dataclass
class PodFiles:
    """What the kubelet mounts for the injected bootstrap step, in a test directory."""

    token_file: Path
    roots_file: Path
    bootstrap: Path


async def mount_pod_volumes(api: ApiServerEmulator, directory: Path, token: str | None) -> PodFiles:
    """The projected token and the roots ConfigMap's data, as files."""
    roots = await eventually(lambda: published_roots(api), within=10, message="roots published")
    (directory / "roots").mkdir(parents=True)
    (directory / "token").mkdir()
    (directory / "envoy").mkdir()
    files = PodFiles(
        directory / "token" / "token",
        directory / "roots" / ROOT_CERT_KEY,
        directory / "envoy" / "bootstrap.yaml",
    )
    kubelet_writes(files.roots_file.parent, roots)
    files.token_file.write_text(token or "unused")
    return files


def kubelet_writes(directory: Path, roots: str) -> None:
    """Fill or refresh a ConfigMap volume as the kubelet does: the data in a new
    timestamped directory, `..data` moved onto a link to it, the key a link through
    `..data` (so a refresh is one rename, which Envoy's watched directory sees)."""
    stamp = directory / f"..{time.time_ns()}"
    stamp.mkdir()
    (stamp / ROOT_CERT_KEY).write_text(roots)
    staging = directory / "..data_tmp"
    staging.symlink_to(stamp.name)
    staging.rename(directory / "..data")
    key = directory / ROOT_CERT_KEY
    if not key.is_symlink():
        key.symlink_to(f"..data/{ROOT_CERT_KEY}")


def run_bootstrap_step(
    plane: ControlPlane,
    files: PodFiles,
    pod_name: str,
    pod_ip: str,
    account: str,
    ports: dict[str, int],
) -> str:
    """`xds-server sidecar-bootstrap` with the injected flags, the files and ports moved
    to the test's, as the kubelet runs it with the downward API's values."""
    subcommand, *args = bootstrap_container(InjectionConfig())["args"]
    assert len(args) % 2 == 0, "every injected flag takes a value"
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert {"--token-file", "--roots-file", "--trust-domain"} <= set(flags)
    files.bootstrap.with_name("labels").write_text(f'app="{pod_name.partition("-")[0]}"\n')
    flags |= {
        "--xds-address": f"127.0.0.1:{plane.xds_port}",
        "--token-file": str(files.token_file),
        "--roots-file": str(files.roots_file),
        "--labels-file": str(files.bootstrap.with_name("labels")),
        "--output": str(files.bootstrap),
        **{f"--{name}-port": str(port) for name, port in ports.items()},
        "--pod-name": pod_name,
        "--namespace": NAMESPACE,
        "--pod-ip": pod_ip,
        "--service-account": account,
    }
    assert cli.main([subcommand, *(part for flag in flags.items() for part in flag)]) == 0
    return files.bootstrap.read_text()


def pod_ports(free_port: Callable[[], int]) -> dict[str, int]:
    return {name: free_port() for name in ("admin", "health", "outbound", "inbound")}


async def start_envoy(envoy_factory: EnvoyFactory, bootstrap: str, name: str) -> EnvoyProcess:
    envoy = envoy_factory(bootstrap, name=name, start=False)
    await envoy.start_async()
    return envoy


async def xds_root_serials(envoy: EnvoyProcess) -> set[str]:
    """The roots Envoy checks the xDS server with: the CA certificates of its one TLS
    context without a certificate of its own (the token-proven xDS cluster's)."""
    certs = await envoy.admin_get_async("/certs")
    assert isinstance(certs, dict)
    return {
        ca["serial_number"]
        for entry in certs.get("certificates", [])
        if not entry.get("cert_chain")
        for ca in entry.get("ca_cert", [])
    }


async def dynamic_listeners(envoy: EnvoyProcess) -> set[str]:
    """The listeners the control plane sent (the bootstrap's own `mesh_health` aside)."""
    return {status["name"] for status in await envoy.listeners_async()} - {"mesh_health"}


async def test_an_injected_sidecar_with_its_pods_token_gets_its_config(
    api_server: ApiServerEmulator,
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    files = await mount_pod_volumes(api_server, tmp_path / "web-0", "token-of-web-0")
    ports = pod_ports(free_port)
    text = run_bootstrap_step(plane, files, "web-0", WEB_IP, "web", ports)
    bootstrap = yaml.safe_load(text)
    (ads,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    assert ads["initial_metadata"] == [{"key": "authorization", "value": "Bearer token-of-web-0"}]
    envoy = await start_envoy(envoy_factory, text, "web-0")

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=2.0) as client:
            try:
                response = await client.get(f"http://127.0.0.1:{ports['health']}/ready")
            except httpx.HTTPError:
                return False
        return response.status_code == 200

    await eventually(ready, within=20, message="the kubelet's probe sees the sidecar ready")
    assert await dynamic_listeners(envoy), "the control plane's listeners arrived"
    assert [s.node_id for s in plane.ads.streams()] == [f"web-0.{NAMESPACE}"]


async def test_a_request_crosses_a_sidecar_proven_by_its_token(
    api_server: ApiServerEmulator,
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    port = free_port()
    backend = await start_sample_app("backend", "v1", BACKEND_APP, port)
    try:
        api_server.create(service("backend", namespace=NAMESPACE, port=8080, target_port=port))
        api_server.create(endpoint_slice("backend", [BACKEND_APP], port, namespace=NAMESPACE))
        files = await mount_pod_volumes(api_server, tmp_path / "client-0", "token-of-client-0")
        outbound_port = free_port()
        bootstrap = render_bootstrap(
            node_id=f"client-0.{NAMESPACE}",
            namespace=NAMESPACE,
            xds_address=f"127.0.0.1:{plane.xds_port}",
            admin_port=0,
            service_account="client",
            outbound_port=outbound_port,
            xds_tls=token_client_tls(
                token=files.token_file.read_text(), roots_file=str(files.roots_file)
            ),
        )
        client = Sidecar(await start_envoy(envoy_factory, bootstrap, "client-0"), "", outbound_port)

        async def answered() -> bool:
            try:
                return (await client.get("backend")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answered, within=20, message="backend answers through the sidecar")
    finally:
        await backend.close()


async def test_a_forged_token_another_pods_token_or_none_never_gets_a_stream(
    api_server: ApiServerEmulator,
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="xds_server.server")
    envoys = []
    # client-0's sidecar with a token the API server never issued, then with web-0's.
    for name, token in (("forged", "made-up-token"), ("stolen", "token-of-web-0")):
        files = await mount_pod_volumes(api_server, tmp_path / name, token)
        text = run_bootstrap_step(
            plane, files, "client-0", CLIENT_IP, "client", pod_ports(free_port)
        )
        envoys.append(await start_envoy(envoy_factory, text, name))
    # And with no token at all: TLS to the right server, no authorization metadata.
    files = await mount_pod_volumes(api_server, tmp_path / "none", "token-of-client-0")
    bootstrap = yaml.safe_load(
        run_bootstrap_step(plane, files, "client-0", CLIENT_IP, "client", pod_ports(free_port))
    )
    del bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"]
    envoys.append(await start_envoy(envoy_factory, yaml.safe_dump(bootstrap), "none"))

    def logged(text: str) -> Callable[[], Any]:
        async def probe() -> bool:
            return any(text in record.getMessage() for record in caplog.records)

        return probe

    await eventually(
        logged("refused by TokenReview: invalid bearer token"),
        within=20,
        message="the forged token refused (UNAUTHENTICATED)",
    )
    await eventually(
        logged(f"bound to Pod {NAMESPACE}/web-0, not node client-0.{NAMESPACE}"),
        within=20,
        message="another Pod's token denied (PERMISSION_DENIED)",
    )
    await eventually(
        logged("carries no authorization: Bearer token"),
        within=20,
        message="no token refused (UNAUTHENTICATED)",
    )
    await asyncio.sleep(2.0)  # several reconnection attempts each
    assert [await dynamic_listeners(envoy) for envoy in envoys] == [set(), set(), set()]
    assert [s.node_id for s in plane.ads.streams()] == []
    for envoy in envoys:
        assert envoy.is_running


async def test_the_roots_configmap_follows_a_root_rotation(
    api_server: ApiServerEmulator, plane: ControlPlane
) -> None:
    first = await eventually(
        lambda: published_roots(api_server), within=10, message="roots published"
    )
    assert first == plane.issuer.bundle.to_pem().decode()
    assert first.count("BEGIN CERTIFICATE") == 1
    configmap = api_server.objects_of(CONFIGMAPS)[(NAMESPACE, ROOT_CONFIGMAP)]
    assert configmap["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "xds-server"}

    await plane.rotate_root(60.0)

    async def both_roots() -> str | None:
        roots = await published_roots(api_server)
        return roots if roots is not None and roots.count("BEGIN CERTIFICATE") == 2 else None

    rotated = await eventually(both_roots, within=10, message="the overlap bundle published")
    assert rotated == plane.issuer.bundle.to_pem().decode()
    assert first.strip() in rotated, "the old root stays trusted during the overlap"


async def test_a_running_sidecar_trusts_the_rotated_roots_once_the_kubelet_refreshes_them(
    api_server: ApiServerEmulator,
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    files = await mount_pod_volumes(api_server, tmp_path / "web-0", "token-of-web-0")
    text = run_bootstrap_step(plane, files, "web-0", WEB_IP, "web", pod_ports(free_port))
    envoy = await start_envoy(envoy_factory, text, "web-0")
    await eventually(lambda: dynamic_listeners(envoy), within=20, message="config arrives")
    before = await xds_root_serials(envoy)
    assert len(before) == 1

    await plane.rotate_root(60.0)

    async def both_roots() -> str | None:
        roots = await published_roots(api_server)
        return roots if roots is not None and roots.count("BEGIN CERTIFICATE") == 2 else None

    kubelet_writes(files.roots_file.parent, await eventually(both_roots, within=10))

    async def overlap_trusted() -> set[str] | None:
        serials = await xds_root_serials(envoy)
        return serials if len(serials) == 2 else None

    after = await eventually(overlap_trusted, within=10, message="Envoy re-reads the roots")
    assert before < after, "the old root and the new one, without restarting Envoy"
    assert envoy.is_running
