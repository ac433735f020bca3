"""A NACK from a real Envoy, named on the manifest behind what it rejected.

An in-process control plane in file mode serves `backend` (its Service the
second document of `services.yaml`, its slice in `endpoints.yaml`) to real
Envoy sidecars.  The builder's test seam then breaks what translation made
of that Service, as a translation bug would: a client's outbound cluster for
`backend`, or the backend sidecar's inbound listener, gets a value Envoy's
validation refuses, keeping the
provenance of the resource it replaces.  Envoy NACKs it; `/api/errors`, the
proxy's JSON and its page name the Service, its file and its document, and
the error clears once the seam is lifted.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    SERVICE_PORT,
    Sidecar,
    admin_get,
    admin_json,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_apps,
    start_sidecar,
)
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from xds_server.app import ControlPlane
from xds_server.cache import LayeredResources, ResourceSet, Snapshot
from xds_server.model import Proxy
from xds_server.resources import CLUSTER, LISTENER, TYPES, Resource, make_resource, unpack

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND = "127.0.34.1"
BACKEND_CLUSTER = f"outbound|{SERVICE_PORT}||backend.default.svc.cluster.local"
SYNCED_TYPES = ("CDS", "EDS", "LDS", "RDS")


@dataclass
class Mesh:
    plane: ControlPlane
    directory: Path

    async def get(self, path: str, **params: str) -> httpx.Response:
        return await admin_get(self.plane, path, **params)

    async def json(self, path: str, **params: str) -> Any:
        return await admin_json(self.plane, path, **params)


@pytest.fixture
async def mesh(tmp_path: Path, free_port: Callable[[], int]) -> AsyncIterator[Mesh]:
    """`backend` as document 1 of services.yaml (after `frontend`), one ready pod."""
    upstream_port = free_port()
    files = {
        "services.yaml": [service_yaml("frontend"), service_yaml("backend")],
        "endpoints.yaml": [slice_yaml("backend", [BACKEND], upstream_port)],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, upstream_port, ("backend", "v1", BACKEND))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        yield Mesh(plane, directory)


async def client_sidecar(
    mesh: Mesh, envoy_factory: EnvoyFactory, free_port: Callable[[], int], delta: bool
) -> Sidecar:
    """A client in `default`: its outbound cluster for `backend` is made from the Service."""
    return await start_sidecar(envoy_factory, mesh.plane.xds_port, free_port(), delta=delta)


async def backend_sidecar(
    mesh: Mesh, envoy_factory: EnvoyFactory, free_port: Callable[[], int], delta: bool
) -> Sidecar:
    """`backend`'s own sidecar: selected by the Service, so it has an inbound listener for it."""
    return await start_sidecar(
        envoy_factory,
        mesh.plane.xds_port,
        free_port(),
        delta=delta,
        node_id="backend-0.default",
        workload="backend",
        labels={"app": "backend"},
        instance_ip=BACKEND,
    )


def invalid_cluster(message: cluster_pb2.Cluster) -> None:
    message.connect_timeout.FromSeconds(-1)  # Envoy: "must be greater than 0s"


def invalid_listener(message: listener_pb2.Listener) -> None:
    message.address.socket_address.port_value = 70_000  # Envoy: a port is at most 65535


def breaking(type_url: str, name: str, corrupt: Callable[[Any], None]) -> Any:
    """A `resource_hook` that serves `name` corrupted, with the provenance it was built with."""

    def hook(proxy: Proxy, snapshot: Snapshot) -> Snapshot:
        served = snapshot.get(type_url)
        original = served[name]
        message = unpack(original)
        corrupt(message)
        broken = make_resource(message, provenance=original.provenance)
        layers = served.layers if isinstance(served, LayeredResources) else (ResourceSet(served),)
        resources = dict(snapshot.resources)
        resources[type_url] = LayeredResources(ResourceSet([broken]), *layers)
        return Snapshot(resources=resources, version=snapshot.version + "-broken")

    return hook


async def proxy_row(mesh: Mesh, node_id: str) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = await mesh.json("/api/proxies")
    return next((row for row in rows if row["node_id"] == node_id), None)


async def wait_for(mesh: Mesh, sidecar: Sidecar, wanted: dict[str, str]) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        row = await proxy_row(mesh, sidecar.node_id)
        if row is None or any(row["sync"][t] != status for t, status in wanted.items()):
            return None
        return row

    row: dict[str, Any] = await eventually(reached, within=15, message=f"sync {wanted}")
    return row


def served_resource(mesh: Mesh, node_id: str, type_url: str, name: str) -> Resource:
    snapshot = mesh.plane.snapshot(node_id)
    assert snapshot is not None
    return snapshot.get(type_url)[name]


def listener_of_backend(mesh: Mesh, node_id: str) -> str:
    """The listener made from the Service `backend` (its provenance names it)."""
    snapshot = mesh.plane.snapshot(node_id)
    assert snapshot is not None
    for name, resource in snapshot.get(LISTENER).items():
        if any(source.key == "Service/default/backend" for source in resource.provenance):
            return name
    raise AssertionError(
        f"no listener names Service/default/backend: {list(snapshot.get(LISTENER))}"
    )


@pytest.mark.parametrize(
    "type_url",
    [CLUSTER, LISTENER],
    ids=["client-outbound-cluster", "backend-inbound-listener"],
)
async def test_an_envoy_nack_names_the_manifest_file_and_object(
    mesh: Mesh,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    delta: bool,
    type_url: str,
) -> None:
    start = client_sidecar if type_url == CLUSTER else backend_sidecar
    sidecar = await start(mesh, envoy_factory, free_port, delta)
    await wait_for(mesh, sidecar, dict.fromkeys(SYNCED_TYPES, "SYNCED"))
    short = TYPES[type_url].short_name
    if type_url == CLUSTER:
        name, corrupt = BACKEND_CLUSTER, invalid_cluster
    else:
        name, corrupt = listener_of_backend(mesh, sidecar.node_id), invalid_listener
    backend = {
        "kind": "Service",
        "namespace": "default",
        "name": "backend",
        "file": str(mesh.directory / "services.yaml"),
        "document": 1,
    }
    built_from = served_resource(mesh, sidecar.node_id, type_url, name).provenance
    assert backend in [source.as_json() for source in built_from]

    mesh.plane.pipeline.builder.resource_hook = breaking(type_url, name, corrupt)
    mesh.plane.pipeline.builder.republish()
    await wait_for(mesh, sidecar, {short: "NACKED"})

    [found] = (await mesh.json("/api/errors"))["nacks"]
    assert (found["node_id"], found["type"], found["resources"]) == (sidecar.node_id, short, [name])
    [blamed] = found["blamed"]
    assert blamed["resource"] == name
    assert backend in blamed["sources"]
    assert backend in found["sources"]
    detail = await mesh.json(f"/api/proxies/{sidecar.node_id}")
    [status] = [t for t in detail["types"] if t["type"] == short]
    assert backend in status["last_nack"]["sources"]
    page = html.unescape((await mesh.get(f"/proxies/{sidecar.node_id}")).text)
    noun = "cluster" if type_url == CLUSTER else "listener"
    sentence = f"rejected {noun} {name} from "
    assert sentence in page
    assert f"Service default/backend ({backend['file']}, document 1)" in page

    mesh.plane.pipeline.builder.resource_hook = None
    mesh.plane.pipeline.builder.republish()
    await wait_for(mesh, sidecar, dict.fromkeys(SYNCED_TYPES, "SYNCED"))
    assert (await mesh.json("/api/errors"))["nacks"] == []
