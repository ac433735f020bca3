"""End to end: a short name means the Service of the caller's namespace, as in Kubernetes.

A pod in `shop` calling `http://backend:8080` reaches `backend.shop`, one in
`default` reaches `backend.default` (the DNS search path starts with the
pod's own namespace), and a qualified name reaches its namespace from
anywhere.  Two real Envoy sidecars, one per namespace, get their namespace
from the bootstrap's node metadata and the outbound route table of that
namespace over RDS; both `backend`s are sample apps on their own loopback
IPs.  Over both state-of-the-world and Delta xDS.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    SERVICE_PORT,
    Sidecar,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_apps,
    start_sidecar,
    write_documents,
)

from xds_server.app import ControlPlane
from xds_server.sample_app import SampleApp

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

NAMESPACES = ("default", "shop")
BACKEND_IPS = {"default": "127.0.35.1", "shop": "127.0.35.2"}
CART_IP = "127.0.35.3"


@dataclass
class TwoNamespaces:
    directory: Path
    plane: ControlPlane
    port: int
    sidecars: dict[str, Sidecar]


@pytest.fixture
async def apps(free_port: Callable[[], int]) -> AsyncIterator[tuple[int, list[SampleApp]]]:
    """`backend` in each namespace (its version says which), and `cart` in shop; one port."""
    port = free_port()
    backends = [("backend", ns, BACKEND_IPS[ns]) for ns in NAMESPACES]
    async with contextlib.AsyncExitStack() as stack:
        yield port, await start_apps(stack, port, *backends, ("cart", "shop", CART_IP))


@pytest.fixture
async def mesh(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    apps: tuple[int, list[SampleApp]],
    delta: bool,
) -> AsyncIterator[TwoNamespaces]:
    port, _ = apps
    files = {
        f"backend-{ns}.yaml": [
            service_yaml("backend", namespace=ns),
            slice_yaml("backend", [BACKEND_IPS[ns]], port, namespace=ns),
        ]
        for ns in NAMESPACES
    }
    directory = manifest_directory(tmp_path, files)
    async with running_control_plane(directory, free_port) as plane:
        sidecars = {
            ns: await start_sidecar(
                envoy_factory,
                plane.xds_port,
                free_port(),
                delta=delta,
                node_id=f"client-0.{ns}",
                namespace=ns,
            )
            for ns in NAMESPACES
        }
        yield TwoNamespaces(directory, plane, port, sidecars)


# Who answers `Host: host` sent to the sidecar in `caller` (one Envoy pair serves every row).
ANSWERS = [
    ("default", "backend", "backend default"),
    ("default", f"backend:{SERVICE_PORT}", "backend default"),
    ("shop", "backend", "backend shop"),
    ("shop", f"backend:{SERVICE_PORT}", "backend shop"),
    ("default", "backend.shop", "backend shop"),
    ("default", f"backend.shop.svc.cluster.local:{SERVICE_PORT}", "backend shop"),
    ("shop", "backend.default", "backend default"),
    ("shop", f"backend.default.svc:{SERVICE_PORT}", "backend default"),
]


async def test_a_short_name_stays_in_the_callers_namespace_and_a_qualified_one_crosses(
    mesh: TwoNamespaces,
) -> None:
    found = {}
    for caller, host, _ in ANSWERS:
        sidecar = mesh.sidecars[caller]
        found[caller, host] = {await sidecar.who_answers(host) for _ in range(3)}
    assert found == {(caller, host): {answer} for caller, host, answer in ANSWERS}


async def test_a_service_added_to_one_namespace_has_its_short_name_only_there(
    mesh: TwoNamespaces,
) -> None:
    shop, default = mesh.sidecars["shop"], mesh.sidecars["default"]
    assert await shop.who_answers("cart") == "HTTP 404"
    write_documents(
        mesh.directory / "cart.yaml",
        service_yaml("cart", namespace="shop"),
        slice_yaml("cart", [CART_IP], mesh.port, namespace="shop"),
    )

    async def cart_reached() -> bool:
        return await shop.who_answers("cart") == "cart shop"

    await eventually(cart_reached, within=10, message="shop's sidecar routes `cart`")
    assert await default.who_answers("cart.shop") == "cart shop"
    assert await default.who_answers("cart") == "HTTP 404"
    # The tables each sidecar holds are its namespace's, as Envoy reports them.
    for ns, sidecar in mesh.sidecars.items():
        stats = await sidecar.envoy.stats_async(
            filter=r"^http\.outbound_http\.rds\..*update_success$"
        )
        assert set(stats) == {f"http.outbound_http.rds.outbound|{ns}.update_success"}, stats
