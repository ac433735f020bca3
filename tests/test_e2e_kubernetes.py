"""End to end from the Kubernetes API to real Envoys: `--source kubernetes` against an emulated API.

The control plane runs in the test's loop with the Kubernetes source, reading
an `ApiServerEmulator` (kmock, over real HTTP) through a kubeconfig, as
`xds-server serve --source kubernetes --kubeconfig ...` does.  Changes made in
the API reach real Envoy sidecars: checked on Envoy's admin API and on real
requests that cross a client sidecar and the backend's own sidecar.

The "pods" are sample apps on their own loopback IPs: the backend app listens
on BACKEND_APP, and its Pod's IP (BACKEND_POD) is where its sidecar accepts
inbound mesh traffic, which it learns only from the Pod in the API.
"""

from __future__ import annotations

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported
import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("kube_fixtures")

from conftest import EnvoyFactory
from e2e_mesh import Sidecar, eventually, sidecar_bootstrap, xds_credential
from kube_fixtures import (
    ENDPOINT_SLICES,
    PODS,
    SERVICES,
    ApiServerEmulator,
    endpoint_slice,
    kubernetes_control_plane,
    pod,
    service,
    unavailable,
)

from xds_server.app import ControlPlane
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess
from xds_server.resources import CLUSTER, ENDPOINT, ROUTE
from xds_server.sample_app import SampleApp, start_sample_app

pytest_plugins = ("kube_fixtures",)

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND_APP, BACKEND_POD, ECHO_V1, ECHO_V2 = "127.0.42.1", "127.0.42.2", "127.0.42.3", "127.0.42.4"
SERVICE_PORT = 8080
BACKEND_NODE = "backend-0.default"
CLIENT_NODE = "client-0.default"


@dataclass
class Apps:
    port: int
    backend: SampleApp
    echo_v1: SampleApp
    echo_v2: SampleApp


@pytest.fixture
async def apps(free_port: Callable[[], int]) -> AsyncIterator[Apps]:
    port = free_port()
    started = Apps(
        port,
        await start_sample_app("backend", "v1", BACKEND_APP, port),
        await start_sample_app("echo", "v1", ECHO_V1, port),
        await start_sample_app("echo", "v2", ECHO_V2, port),
    )
    yield started
    for app in (started.backend, started.echo_v1, started.echo_v2):
        await app.close()


@pytest.fixture
async def plane(kubeconfig: Path, free_port: Callable[[], int]) -> AsyncIterator[ControlPlane]:
    """The control plane, in this loop, watching the emulated API; listening (maybe not synced)."""
    started = kubernetes_control_plane(kubeconfig, free_port)
    task = asyncio.create_task(started.run())
    await asyncio.wait_for(started.listening.wait(), timeout=10)
    yield started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=15)


def backend_objects(api: ApiServerEmulator, port: int) -> None:
    """The backend Service, its EndpointSlice (the Pod's IP) and its Pod."""
    api.create(service("backend", port=SERVICE_PORT, target_port=port))
    api.create(endpoint_slice("backend", [BACKEND_POD], port, pod_names=["backend-0"]))
    api.create(pod("backend-0", BACKEND_POD, labels={"app": "backend"}, service_account="backend"))


async def start_backend_sidecar(
    envoy_factory: EnvoyFactory, plane: ControlPlane, free_port: Callable[[], int], delta: bool
) -> EnvoyProcess:
    """A sidecar that declares nothing but its node id and where its app listens."""
    bootstrap = render_bootstrap(
        node_id=BACKEND_NODE,
        namespace="default",
        xds_address=f"127.0.0.1:{plane.xds_port}",
        admin_port=0,
        delta=delta,
        app_address=BACKEND_APP,
        outbound_port=free_port(),
        xds_tls=xds_credential(plane.xds_port, "default", "backend"),  # its Pod's account
    )
    envoy = envoy_factory(bootstrap, name="backend", start=False)
    await envoy.start_async()
    await envoy.wait_live_async()
    return envoy


async def start_client_sidecar(
    envoy_factory: EnvoyFactory, plane: ControlPlane, free_port: Callable[[], int], delta: bool
) -> Sidecar:
    outbound_port = free_port()
    envoy = envoy_factory(
        sidecar_bootstrap(CLIENT_NODE, plane.xds_port, outbound_port, delta=delta),
        name="client",
        start=False,
    )
    await envoy.start_async()
    await envoy.wait_live_async()
    return Sidecar(envoy, CLIENT_NODE, outbound_port)


async def listener_names(envoy: EnvoyProcess) -> set[str]:
    return {status["name"] for status in await envoy.listeners_async()}


async def cluster_hosts(sidecar: Sidecar, cluster: str) -> set[str] | None:
    """`ip:port` of each host Envoy has for `cluster`, or None if it has no such cluster."""
    for status in await sidecar.envoy.clusters_async():
        if status["name"] == cluster:
            return {
                "{address}:{port_value}".format(**host["address"]["socket_address"])
                for host in status.get("host_statuses", [])
            }
    return None


def outbound(name: str, port: int = SERVICE_PORT) -> str:
    return f"outbound|{port}||{name}.default.svc.cluster.local"


# -- readiness -------------------------------------------------------------------------


async def test_readiness_is_false_until_every_kind_is_listed(
    api_server: ApiServerEmulator, kubeconfig: Path, free_port: Callable[[], int]
) -> None:
    api_server.create(service("backend"))
    with unavailable(api_server, "pods"):
        plane = kubernetes_control_plane(kubeconfig, free_port)
        task = asyncio.create_task(plane.run())
        try:
            await asyncio.wait_for(plane.listening.wait(), timeout=10)
            url = f"http://127.0.0.1:{plane.admin_port}"

            async def pods_list_retried() -> bool:
                return len(api_server.list_requests(PODS)) >= 2

            async with httpx.AsyncClient(timeout=5.0) as http:
                await eventually(pods_list_retried, within=5, message="the pods list is retried")
                readyz = await http.get(f"{url}/readyz")
                assert readyz.status_code == 503
                assert readyz.json()["sources_synced"] is False
                assert not plane.is_ready() and not plane.started.is_set()
                errors = (await http.get(f"{url}/api/errors")).json()["source"]
                assert errors == [
                    "v1 pods in all namespaces: list failed: "
                    "HTTP 503 Service Unavailable: the server is currently unavailable"
                ]

                api_server.unavailable.clear()
                await asyncio.wait_for(plane.started.wait(), timeout=5)
                readyz = await http.get(f"{url}/readyz")
                assert readyz.status_code == 200 and readyz.json()["ready"] is True
                assert plane.pipeline.builder.mesh.service("default", "backend") is not None
                assert (await http.get(f"{url}/api/errors")).json()["source"] == []
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)


# -- the Pod's labels reach its sidecar ---------------------------------------------------


async def test_a_sidecar_gets_its_pods_config_and_a_request_crosses_both_sidecars(
    api_server: ApiServerEmulator,
    apps: Apps,
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    delta: bool,
) -> None:
    backend_objects(api_server, apps.port)
    await asyncio.wait_for(plane.started.wait(), timeout=10)
    backend = await start_backend_sidecar(envoy_factory, plane, free_port, delta)
    client = await start_client_sidecar(envoy_factory, plane, free_port, delta)
    inbound = f"inbound_{apps.port}"

    async def inbound_listener() -> bool:
        return inbound in await listener_names(backend)

    await eventually(inbound_listener, within=10, message="the Pod's labels select backend")
    proxy = plane.pipeline.builder.proxies[BACKEND_NODE]
    assert (proxy.ip, proxy.service_account) == (BACKEND_POD, "backend")

    async def through_both_sidecars() -> dict[str, Any] | None:
        response = await client.get("backend")
        if response.status_code != 200:
            return None
        body: dict[str, Any] = json.loads(response.text)
        return body

    answer = await eventually(through_both_sidecars, within=10, message="backend answers")
    assert (answer["service"], answer["version"]) == ("backend", "v1")
    assert answer["headers"]["x-mesh-inbound"] == BACKEND_NODE

    # MODIFIED Pod: relabelled out of the Service, its sidecar stops accepting for it.
    api_server.patch(PODS, "default", "backend-0", {"metadata": {"labels": {"app": "other"}}})

    async def no_inbound_listener() -> bool:
        return inbound not in await listener_names(backend)

    await eventually(no_inbound_listener, within=10, message="relabelled Pod loses inbound")
    api_server.patch(PODS, "default", "backend-0", {"metadata": {"labels": {"app": "backend"}}})
    await eventually(inbound_listener, within=10, message="relabelled back")
    answer = await eventually(through_both_sidecars, within=10, message="backend answers again")
    assert answer["headers"]["x-mesh-inbound"] == BACKEND_NODE

    # DELETED Pod: the sidecar is back to what its bootstrap declared (no labels, no IP).
    api_server.delete(PODS, "default", "backend-0")
    await eventually(no_inbound_listener, within=10, message="deleted Pod loses inbound")


# -- Services and EndpointSlices ----------------------------------------------------------


async def test_services_and_endpoint_slices_added_modified_and_deleted_reach_envoy(
    api_server: ApiServerEmulator,
    apps: Apps,
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
) -> None:
    backend_objects(api_server, apps.port)
    await asyncio.wait_for(plane.started.wait(), timeout=10)
    client = await start_client_sidecar(envoy_factory, plane, free_port, delta=False)
    echo_v1, echo_v2 = f"{ECHO_V1}:{apps.port}", f"{ECHO_V2}:{apps.port}"

    async def hosts_are(cluster: str, expected: set[str] | None) -> bool:
        return await cluster_hosts(client, cluster) == expected

    # ADDED: a Service and its EndpointSlice.
    api_server.create(service("echo", port=SERVICE_PORT, target_port=apps.port))
    api_server.create(endpoint_slice("echo", [ECHO_V1], apps.port))
    await eventually(
        lambda: hosts_are(outbound("echo"), {echo_v1}), within=10, message="echo added"
    )
    assert await client.who_answers("echo") == "echo v1"

    # MODIFIED EndpointSlice: the endpoints move.
    api_server.replace(endpoint_slice("echo", [ECHO_V2], apps.port))
    await eventually(
        lambda: hosts_are(outbound("echo"), {echo_v2}), within=10, message="endpoints moved"
    )
    assert await client.who_answers("echo") == "echo v2"

    # MODIFIED Service: a new port is a new cluster, the old one goes.
    api_server.replace(service("echo", port=9090, target_port=apps.port))
    await eventually(
        lambda: hosts_are(outbound("echo", 9090), {echo_v2}), within=10, message="port changed"
    )
    assert await cluster_hosts(client, outbound("echo")) is None
    assert await client.who_answers("echo:9090") == "echo v2"

    # DELETED: the Service's cluster is removed; the slice's endpoints with it.
    api_server.delete(SERVICES, "default", "echo")
    api_server.delete(ENDPOINT_SLICES, "default", "echo-abcde")
    await eventually(
        lambda: hosts_are(outbound("echo", 9090), None), within=10, message="echo deleted"
    )
    assert await client.who_answers("echo:9090") == "HTTP 404"
    assert await cluster_hosts(client, outbound("backend")) == {f"{BACKEND_POD}:{apps.port}"}


# -- two replicas -------------------------------------------------------------------------


async def test_two_replicas_serve_the_same_config_and_follow_the_same_changes(
    api_server: ApiServerEmulator,
    apps: Apps,
    kubeconfig: Path,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
) -> None:
    """No leader: each replica derives the mesh from the API alone, so a proxy may
    connect to either and get the same resources, versioned by content alike."""
    backend_objects(api_server, apps.port)
    api_server.create(service("echo", port=SERVICE_PORT, target_port=apps.port))
    api_server.create(endpoint_slice("echo", [ECHO_V1], apps.port))
    replicas = [kubernetes_control_plane(kubeconfig, free_port) for _ in range(2)]
    tasks = [asyncio.create_task(replica.run()) for replica in replicas]
    try:
        for replica in replicas:
            await asyncio.wait_for(replica.started.wait(), timeout=10)
        clients = [
            await start_client_sidecar(envoy_factory, replica, free_port, delta=delta)
            for replica, delta in zip(replicas, (False, True), strict=True)
        ]
        for client in clients:
            assert await client.who_answers("echo") == "echo v1"
        served = [replica.cache.get_snapshot(CLIENT_NODE) for replica in replicas]
        assert served[0] is not None and served[1] is not None
        # Clusters, endpoints and routes alike (the listeners differ only because the
        # two test sidecars bind different outbound ports on one machine).
        for type_url in (CLUSTER, ENDPOINT, ROUTE):
            assert served[0].type_version(type_url) == served[1].type_version(type_url)

        api_server.replace(endpoint_slice("echo", [ECHO_V2], apps.port))
        echo_v2 = {f"{ECHO_V2}:{apps.port}"}
        for client in clients:

            async def moved(client: Sidecar = client) -> bool:
                return await cluster_hosts(client, outbound("echo")) == echo_v2

            await eventually(moved, within=10, message="both replicas push the change")
            assert await client.who_answers("echo") == "echo v2"
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)


# -- the command ------------------------------------------------------------------------


def start_serve(
    kubeconfig: Path, xds_port: int, admin_port: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "xds_server.cli", "serve",
        "--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--namespaces", "default",
        "--xds-listen", f"127.0.0.1:{xds_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def test_xds_server_serve_source_kubernetes_syncs_from_the_api(
    api_server: ApiServerEmulator,
    kubeconfig: Path,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    api_server.create(service("backend"))
    admin_port, log = free_port(), tmp_path / "serve.log"
    process = start_serve(kubeconfig, free_port(), admin_port, log)
    try:

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2.0) as http:
                return (await http.get(f"http://127.0.0.1:{admin_port}/readyz")).status_code == 200

        await eventually(ready, within=20, interval=0.1, message="serve is ready")
        requests = api_server.list_requests(SERVICES)
        assert requests and {request.namespace for request in requests} == {"default"}
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        stop(process)
