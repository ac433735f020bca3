"""End to end: certificate and root rotations between two real sidecars under load.

`backend` is one meshed pod (STRICT: its sidecar accepts mutual TLS only), and a
client pod's sidecar calls it.  A load generator in another process sends
hundreds of requests per second through the client sidecar the whole time: HTTP
requests over kept-alive connections, and TCP connections, each of which is a
new connection between the two sidecars, so a new mutual TLS handshake with the
certificates both hold at that moment.

With SVIDs living 4 s, both proxies are re-issued about every 2 s: each new
serial shows on both Envoys' `/certs`, and no request fails.  A root rotation
with a 6 s overlap first makes both trust the old and the new root, then
re-issues both certificates under the new root, then drops the old one: both
proxies end up holding a certificate signed by the new root and trusting only
it, and no request fails through any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import EnvoyFactory
from e2e_mesh import eventually, manifest_directory, start_apps
from e2e_security import (
    HeldCertificate,
    MeshSidecar,
    backend_manifests,
    mesh_load,
    peer_authentication_yaml,
    pod_yaml,
    security_plane,
    signed_by,
    start_mesh_sidecar,
)

from xds_server.app import ControlPlane
from xds_server.security.certificates import serial_hex

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]

POD_IP, APP_IP = "127.0.43.1", "127.0.43.2"
BACKEND_OUTBOUND, CLIENT_OUTBOUND = "127.0.43.3", "127.0.43.4"
BACKEND_HOST = "backend.default.svc.cluster.local"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
BACKEND_ID = "spiffe://cluster.local/ns/default/sa/backend"


@dataclass
class Pair:
    plane: ControlPlane
    client: MeshSidecar
    backend: MeshSidecar
    tcp_port: int
    tcp_target: int

    @property
    def sidecars(self) -> tuple[MeshSidecar, MeshSidecar]:
        return self.client, self.backend

    async def held(self) -> tuple[HeldCertificate | None, HeldCertificate | None]:
        return await self.client.certificates(), await self.backend.certificates()

    async def handshakes(self) -> int:
        """Mutual TLS handshakes the backend's sidecar completed on its TCP port."""
        return await self.backend.counter(f"listener.{POD_IP}_{self.tcp_target}.ssl.handshake")

    def load(self, seconds: float) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        return mesh_load(
            seconds=seconds,
            max_requests=int(seconds * 2000),  # a bound, far above what 2 cores serve
            http=f"{CLIENT_OUTBOUND}:{self.client.outbound_port}",
            host=BACKEND_HOST,
            tcp=f"{CLIENT_OUTBOUND}:{self.tcp_port}",
        )


@contextlib.asynccontextmanager
async def strict_pair(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    svid_ttl_seconds: float,
) -> AsyncIterator[Pair]:
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {
        "backend.yaml": backend_manifests(POD_IP, port, tcp_port, tcp_target),
        "client.yaml": [pod_yaml("client-0", "default", "client", {"app": "client"})],
        "peer.yaml": [peer_authentication_yaml("STRICT")],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        await start_apps(stack, tcp_target, ("backend", "tcp", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(
            security_plane(directory, free_port, tmp_path / "ca", svid_ttl_seconds)
        )
        backend = await start_mesh_sidecar(
            envoy_factory, plane, node_id="backend-0.default",
            service_account="backend", address=BACKEND_OUTBOUND, outbound_port=free_port(),
            workload="backend-0", labels={"app": "backend"}, instance_ip=POD_IP,
            app_address=APP_IP,
        )  # fmt: skip
        client = await start_mesh_sidecar(
            envoy_factory, plane, node_id="client-0.default",
            service_account="client", address=CLIENT_OUTBOUND, outbound_port=free_port(),
            workload="client-0", labels={"app": "client"},
        )  # fmt: skip
        pair = Pair(plane, client, backend, tcp_port, tcp_target)

        async def mtls_call() -> bool:
            response = await client.get(BACKEND_HOST)
            if response.status_code != 200:
                return False
            return f"URI={CLIENT_ID}" in json.loads(response.text)["headers"].get(
                "x-forwarded-client-cert", ""
            )

        await eventually(mtls_call, within=30, interval=0.2, message="an mTLS call")
        yield pair


def assert_no_failure(load: dict[str, Any], seconds: float) -> None:
    assert load["failures"] == [], f"{load['failed']} failed: {load['failures']}"
    rate = (load["http"] + load["tcp"]) / load["seconds"]
    assert rate > 200, f"{load} over {seconds} s"
    assert load["tcp"] > 20 * seconds, load  # new sidecar-to-sidecar handshakes throughout


async def test_svids_rotate_on_both_sidecars_under_load_with_no_failed_request(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with strict_pair(tmp_path, free_port, envoy_factory, svid_ttl_seconds=4.0) as pair:
        first = await eventually(lambda: _both(pair), within=10, message="SVIDs on both")
        assert [held.uris for held in first] == [{CLIENT_ID}, {BACKEND_ID}]
        pids = [sidecar.envoy.pid for sidecar in pair.sidecars]
        handshakes = await pair.handshakes()
        seen = [{held.serial} for held in first]
        async with pair.load(seconds=10.0) as load:
            # Re-issued about every 2 s: two new serials on each proxy, in every context.
            async def rotated() -> bool:
                for held, serials in zip(await pair.held(), seen, strict=True):
                    if held is not None and held.serial is not None:
                        serials.add(held.serial)
                return all(len(serials) >= 3 for serials in seen)

            await eventually(rotated, within=9, interval=0.1, message="two rotations on both")
        assert_no_failure(load, 10.0)
        assert await pair.handshakes() - handshakes >= load["tcp"]
        assert [sidecar.envoy.pid for sidecar in pair.sidecars] == pids  # never restarted

        async def issued_serials_held() -> bool:
            current = {c.spiffe_id: c.serial for c in pair.plane.issuer.certificates()}
            held = [held and held.serial for held in await pair.held()]
            return held == [current[CLIENT_ID], current[BACKEND_ID]]

        await eventually(issued_serials_held, within=5, message="the issued serials held")


async def test_a_root_rotation_with_overlap_under_load_fails_no_request(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with strict_pair(tmp_path, free_port, envoy_factory, svid_ttl_seconds=600.0) as pair:
        old_root = pair.plane.issuer.ca.trust_anchor
        first = await eventually(lambda: _both(pair), within=10, message="SVIDs on both")
        assert {held.root_serials for held in first} == {frozenset({serial_hex(old_root)})}
        async with pair.load(seconds=14.0) as load:
            await asyncio.sleep(1.0)
            rotation = await pair.plane.rotate_root(6.0)

            async def trust(*serials: str) -> bool:
                return all(held and held.root_serials == set(serials) for held in await pair.held())

            await eventually(
                lambda: trust(rotation.old_serial, rotation.new_serial),
                within=3,
                interval=0.1,
                message="both roots trusted",
            )

            async def reissued_under_new_root() -> bool:
                new_root = pair.plane.issuer.ca.trust_anchor
                if serial_hex(new_root) != rotation.new_serial:
                    return False  # not issuing with the new root yet
                chains = {c.serial: c.certificate_chain for c in pair.plane.issuer.certificates()}
                return all(
                    held is not None
                    and held.serial in chains
                    and signed_by(chains[held.serial], new_root)
                    for held in await pair.held()
                )

            await eventually(
                reissued_under_new_root, within=6, interval=0.1, message="new root's SVIDs"
            )
            assert time.time() < rotation.overlap_ends_at  # both were re-issued in the overlap
            await asyncio.sleep(max(0.0, rotation.overlap_ends_at - time.time()))
            await eventually(
                lambda: trust(rotation.new_serial), within=3, interval=0.1, message="old dropped"
            )
            handshakes, dropped_at = await pair.handshakes(), time.monotonic()
        assert time.monotonic() - dropped_at > 2.0  # the load went on after the drop
        assert await pair.handshakes() > handshakes  # new handshakes with the new root only
        assert_no_failure(load, 14.0)


async def _both(pair: Pair) -> tuple[HeldCertificate, HeldCertificate] | None:
    """Both proxies' SVIDs, once each holds one in every TLS context."""
    client, backend = await pair.held()
    if client is None or backend is None or client.serial is None or backend.serial is None:
        return None
    return client, backend
