"""End to end: a Service change reaches only the proxies whose resources it changes.

Two real Envoy sidecars, one in `shop` (selected by Service `web`, so it has
an inbound listener for it) and one in `default`.  Moving `web`'s targetPort
changes the shop sidecar's inbound listener and cluster; the default sidecar
holds nothing that changed, so it is sent nothing: its Envoy counts no new
CDS/LDS/RDS/EDS update, and the control plane counts no new response on its
stream.  Over both state-of-the-world and Delta xDS.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EnvoyFactory
from e2e_mesh import eventually, running_control_plane, write_documents, xds_credential

from xds_server.app import ControlPlane
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

SHOP_IP = "127.0.37.1"
UPDATES = r"^(cluster_manager\.cds|listener_manager\.lds|http\.\w+\.rds\.[^.]+)\.update_attempt$"


def web_service(target_port: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: shop}}
        spec:
          selector: {{app: web}}
          ports:
            - {{name: http, port: 8080, targetPort: {target_port}}}
        """
    )


def sidecar_yaml(node_id: str, namespace: str, xds_port: int, delta: bool, **extra: object) -> str:
    return render_bootstrap(
        node_id=node_id,
        namespace=namespace,
        xds_address=f"127.0.0.1:{xds_port}",
        admin_port=0,
        delta=delta,
        outbound_port=15001 if namespace == "shop" else 15002,
        xds_tls=xds_credential(xds_port, namespace, str(extra.get("service_account", "default"))),
        **extra,  # type: ignore[arg-type]
    )


def update_counts(envoy: EnvoyProcess) -> dict[str, int]:
    return envoy.stats(UPDATES)


def responses_sent(plane: ControlPlane, node_id: str) -> int:
    (view,) = [p for p in plane.proxies() if p.node_id == node_id]
    return sum(status.responses for status in view.stream.types.values())


async def inbound_ports(envoy: EnvoyProcess, expected: set[int]) -> bool:
    """Whether the sidecar's active inbound listeners are on exactly `expected`."""
    listeners = await envoy.listeners_async()
    ports = {
        status["local_address"]["socket_address"]["port_value"]
        for status in listeners
        if status["name"].startswith("inbound_")
    }
    return ports == expected


async def test_a_service_change_in_one_namespace_sends_nothing_to_the_other(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory, delta: bool
) -> None:
    directory = tmp_path / "mesh"
    directory.mkdir()
    write_documents(directory / "web.yaml", web_service(9001))
    async with running_control_plane(directory, free_port) as plane:
        xds_port = plane.xds_port
        shop = envoy_factory(
            sidecar_yaml(
                "web-0.shop", "shop", xds_port, delta, labels={"app": "web"}, instance_ip=SHOP_IP
            ),
            name="shop",
            start=False,
        )
        other = envoy_factory(
            sidecar_yaml("client-0.default", "default", xds_port, delta), start=False
        )
        for envoy in (shop, other):
            await envoy.start_async()
            await envoy.wait_live_async()
        await eventually(lambda: inbound_ports(shop, {9001}), message="inbound 9001")
        other_updates = await asyncio.to_thread(update_counts, other)
        other_responses = responses_sent(plane, "client-0.default")
        shop_updates = await asyncio.to_thread(update_counts, shop)

        write_documents(directory / "web.yaml", web_service(9002))

        await eventually(lambda: inbound_ports(shop, {9002}), message="inbound 9002")
        assert await asyncio.to_thread(update_counts, shop) != shop_updates
        await asyncio.sleep(0.5)  # anything still on its way to the other sidecar lands
        assert await asyncio.to_thread(update_counts, other) == other_updates
        assert responses_sent(plane, "client-0.default") == other_responses
