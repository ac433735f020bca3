"""End to end: what a source object feeds, on a real control plane with two real Envoys.

Service `web` in `shop` selects the shop sidecar only (by its labels); a
client sidecar runs in `default`.  `/api/objects/Service/shop/web` and
`xds-server affected` list `web`'s own outbound cluster and load assignment
as held by both proxies, and the inbound listener for it as held by the shop
proxy only; `web`'s EndpointSlice lists its load assignment.  Each Envoy's
own admin confirms it runs what it is said to hold.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import eventually, running_control_plane, slice_yaml, write_documents, xds_credential

from xds_server.admin.dependents import DependentsResponse
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

SHOP_IP = "127.0.38.1"
SHOP, CLIENT = "web-0.shop", "client-0.default"
BOTH = sorted([SHOP, CLIENT])
WEB_CLUSTER = "outbound|8080||web.shop.svc.cluster.local"
INBOUND = "inbound_9001"
WEB = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      selector: {app: web}
      ports:
        - {name: http, port: 8080, targetPort: 9001}
    """
)


def sidecar(node_id: str, namespace: str, xds_port: int, outbound: int, **extra: object) -> str:
    return render_bootstrap(
        node_id=node_id,
        namespace=namespace,
        xds_address=f"127.0.0.1:{xds_port}",
        admin_port=0,
        delta=False,
        outbound_port=outbound,
        xds_tls=xds_credential(xds_port, namespace, str(extra.get("service_account", "default"))),
        **extra,  # type: ignore[arg-type]
    )


async def affected(admin_port: int, kind: str, namespace: str, name: str) -> DependentsResponse:
    url = f"http://127.0.0.1:{admin_port}/api/objects/{kind}/{namespace}/{name}"
    async with httpx.AsyncClient(timeout=5.0) as client:
        reply = await client.get(url)
    reply.raise_for_status()
    return DependentsResponse.model_validate(reply.json())


def holders(answer: DependentsResponse) -> dict[tuple[str, str], list[str]]:
    return {(r.type, r.name): r.proxies for r in answer.resources}


def cli(admin_port: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "xds_server.cli", "affected", *args]
    command += ["--admin", f"http://127.0.0.1:{admin_port}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


async def runs(envoy: EnvoyProcess) -> tuple[set[str], set[str]]:
    """(clusters, listeners) the Envoy has active."""
    clusters = {status["name"] for status in await envoy.clusters_async()}
    listeners = {status["name"] for status in await envoy.listeners_async()}
    return clusters, listeners


async def test_a_service_and_its_slice_list_what_they_feed_and_which_real_proxy_holds_it(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    directory = tmp_path / "mesh"
    directory.mkdir()
    write_documents(directory / "web.yaml", WEB, slice_yaml("web", [SHOP_IP], 9001, "shop"))
    async with running_control_plane(directory, free_port) as plane:
        xds_port = plane.xds_port
        shop_yaml = sidecar(
            SHOP, "shop", xds_port, free_port(), labels={"app": "web"}, instance_ip=SHOP_IP
        )
        shop = envoy_factory(shop_yaml, name="shop", start=False)
        client_yaml = sidecar(CLIENT, "default", xds_port, free_port())
        client = envoy_factory(client_yaml, name="client", start=False)
        for envoy in (shop, client):
            await envoy.start_async()
            await envoy.wait_live_async()

        async def both_hold_web() -> bool:
            shop_runs, client_runs = await runs(shop), await runs(client)
            return (
                WEB_CLUSTER in shop_runs[0] & client_runs[0]
                and INBOUND in shop_runs[1] - client_runs[1]
            )

        await eventually(both_hold_web, message="web's cluster on both, its inbound on shop")

        service = await affected(plane.admin_port, "Service", "shop", "web")
        held = holders(service)
        assert held[("CDS", WEB_CLUSTER)] == BOTH
        assert held[("EDS", WEB_CLUSTER)] == BOTH
        assert held[("LDS", INBOUND)] == [SHOP]
        assert not [key for key, proxies in held.items() if key[0] == "LDS" and CLIENT in proxies]
        assert (service.in_mesh, service.object.where) == (True, f"{directory / 'web.yaml'}#0")
        assert service.proxies == BOTH

        endpoint_slice = await affected(plane.admin_port, "EndpointSlice", "shop", "web-slice")
        assert holders(endpoint_slice)[("EDS", WEB_CLUSTER)] == BOTH
        assert endpoint_slice.object.where == f"{directory / 'web.yaml'}#1"

        table = await asyncio.to_thread(cli, plane.admin_port, "svc/shop/web")
        assert table.returncode == 0, table.stderr
        rows = [line.split(maxsplit=2) for line in table.stdout.splitlines()]
        assert ["CDS", WEB_CLUSTER, ", ".join(BOTH)] in rows
        assert ["LDS", INBOUND, SHOP] in rows
        dumped = await asyncio.to_thread(cli, plane.admin_port, "Service/shop/web", "-o", "json")
        every_page = DependentsResponse.model_validate_json(dumped.stdout)
        assert every_page.model_dump(exclude={"limit"}) == service.model_dump(exclude={"limit"})

        unknown = await asyncio.to_thread(cli, plane.admin_port, "Deployment/shop/web")
        assert unknown.returncode == 1
        assert "HTTP 404" in unknown.stderr and "unknown kind" in unknown.stderr
