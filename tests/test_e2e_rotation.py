"""End to end: a real Envoy holds its SPIFFE certificate over SDS, and rotations reach it
without a restart while TLS handshakes keep succeeding.

The control plane issues with a TTL of 4 s.  A test listener (added through the
builder's `resource_hook`, as the mTLS translation's listeners do) terminates TLS with
the SDS Secrets `default` and `ROOTCA`, so Envoy fetches them; `/certs` then shows
the certificate with the expected URI SAN, and its serial changes at each half-life
while the same Envoy process keeps serving.  Clients in another process (4 threads, a
new connection and full handshake per request, about 900 per second here) send HTTPS
requests through it the whole time, verifying against the trust bundle the control
plane publishes, and none fails, through certificate re-issues and a root rotation
with overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import EnvoyFactory
from e2e_mesh import eventually, plane_settings, start_sidecar
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from xds_server.app import ControlPlane
from xds_server.cache import ResourceSet, Snapshot
from xds_server.model import Proxy
from xds_server.resources import LISTENER, make_resource
from xds_server.settings import SecuritySettings
from xds_server.translate.secrets import SVID_SECRET_NAME, TRUST_ROOTS_SECRET_NAME

SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/default"
ANSWER = b"tls-ok"


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def tls_listener(port: int) -> listener_pb2.Listener:
    """A listener terminating TLS with the proxy's SDS Secrets and answering `ANSWER`."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[sds(SVID_SECRET_NAME)],
            validation_context_sds_secret_config=sds(TRUST_ROOTS_SECRET_NAME),
        )
    )
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="tls_probe",
        route_config=route_pb2.RouteConfiguration(
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name="probe",
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            direct_response=route_components_pb2.DirectResponseAction(
                                status=200, body=base_pb2.DataSource(inline_bytes=ANSWER)
                            ),
                        )
                    ],
                )
            ]
        ),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router")],
    )
    manager.http_filters[0].typed_config.Pack(router_pb2.Router())
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
        ],
        transport_socket=base_pb2.TransportSocket(name="envoy.transport_sockets.tls"),
    )
    chain.filters[0].typed_config.Pack(manager)
    chain.transport_socket.typed_config.Pack(context)
    return listener_pb2.Listener(
        name="tls-probe",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        ),
        filter_chains=[chain],
    )


def with_tls_listener(port: int) -> Callable[[Proxy, Snapshot], Snapshot]:
    resource = make_resource(tls_listener(port))

    def hook(proxy: Proxy, snapshot: Snapshot) -> Snapshot:
        resources = dict(snapshot.resources)
        listeners = dict(resources[LISTENER])
        listeners[resource.name] = resource
        resources[LISTENER] = ResourceSet(listeners.values())
        return Snapshot(resources=resources, version=snapshot.version)

    return hook


LOAD_SCRIPT = Path(__file__).with_name("e2e_tls_load.py")


@contextlib.asynccontextmanager
async def tls_load(
    port: int, roots: Callable[[], bytes], directory: Path, seconds: float, threads: int = 4
) -> AsyncIterator[dict[str, Any]]:
    """HTTPS requests through the probe listener from another process (`e2e_tls_load`) for
    `seconds`, verifying against `roots()`, which is copied to a file every 20 ms; the
    yielded dict holds the outcome once the block has ended."""
    roots_file = directory / "roots.pem"
    roots_file.write_bytes(roots())

    async def keep_roots() -> None:
        while True:
            pem = roots()
            if pem != roots_file.read_bytes():
                staged = roots_file.with_suffix(".new")
                staged.write_bytes(pem)
                staged.replace(roots_file)  # atomic: the client never reads half a bundle
            await asyncio.sleep(0.02)

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LOAD_SCRIPT),
        str(port),
        str(roots_file),
        str(seconds),
        str(threads),
        stdout=asyncio.subprocess.PIPE,
    )
    keeper = asyncio.create_task(keep_roots())
    outcome: dict[str, Any] = {}
    try:
        yield outcome
        out, _ = await asyncio.wait_for(process.communicate(), timeout=seconds + 30)
        outcome.update(json.loads(out))
    finally:
        keeper.cancel()
        if process.returncode is None:
            process.kill()
            await process.wait()


def held_certificate(certs: Any) -> tuple[str, list[str], int] | None:
    """(serial, URI SANs, number of trusted CAs) of the SVID Envoy serves, if any.

    `/certs` also lists the xDS cluster's context (the bootstrap's client credential,
    which lives an hour): the SVID, living seconds here, is the one expiring first."""
    held: list[tuple[str, str, list[str], int]] = []
    for entry in certs.get("certificates", []):
        for cert in entry.get("cert_chain", []):
            uris = [san["uri"] for san in cert.get("subject_alt_names", []) if "uri" in san]
            if uris:
                roots = len(entry.get("ca_cert", []))
                held.append((cert["expiration_time"], cert["serial_number"], uris, roots))
    if not held:
        return None
    _, serial, uris, roots = min(held)
    return serial, uris, roots


@pytest.fixture
async def plane(free_port: Callable[[], int], tmp_path: Path) -> Any:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    settings = plane_settings(
        f"file:{manifests}",
        free_port,
        security=SecuritySettings(
            ca_dir=Path(tempfile.mkdtemp(dir=tmp_path, prefix="ca-")), svid_ttl_seconds=4.0
        ),
    )
    plane = ControlPlane(settings)
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        yield plane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_envoy_holds_its_svid_and_rotations_reach_it_with_no_failed_handshake(
    plane: ControlPlane,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    probe_port = free_port()
    plane.pipeline.builder.resource_hook = with_tls_listener(probe_port)
    sidecar = await start_sidecar(
        envoy_factory, plane.xds_port, free_port(), delta=False, node_id="client-0.default"
    )
    envoy = sidecar.envoy

    async def certs() -> tuple[str, list[str], int] | None:
        return held_certificate(await envoy.admin_get_async("/certs"))

    first = await eventually(certs, within=10, message="Envoy holds an SVID")
    assert first[1] == [SPIFFE_ID]
    issued = plane.issuer.certificates()
    assert [c.spiffe_id for c in issued] == [SPIFFE_ID]
    assert int(first[0], 16) == int(issued[0].serial, 16)
    pid = envoy.pid

    def bundle() -> bytes:
        return plane.issuer.bundle.to_pem()

    async with tls_load(probe_port, bundle, tmp_path, seconds=12.0) as load:
        # A TTL of 4 s: re-issued about every 2 s, each new serial reaches Envoy.
        seen = {first[0]}
        for _ in range(2):

            async def new_serial() -> str | None:
                held = await certs()
                return held[0] if held is not None and held[0] not in seen else None

            seen.add(await eventually(new_serial, within=8, message="a re-issued serial"))
        # Root rotation with a 4 s overlap: both roots trusted, then the new one only.
        rotation = await plane.rotate_root(4.0)
        assert (await eventually(certs, within=5))[2] >= 1
        await eventually(
            lambda: _is_two(certs), within=5, message="Envoy trusts the old and the new root"
        )
        await asyncio.sleep(max(0.0, rotation.overlap_ends_at - time.time()) + 1.5)
        held = await certs()
        assert held is not None and held[2] == 1
        assert len(plane.issuer.bundle.roots) == 1
    assert envoy.pid == pid  # the same Envoy, never restarted
    assert load["failures"] == []
    rate = load["ok"] / load["seconds"]
    assert rate > 200, f"{load['ok']} requests in {load['seconds']:.1f} s"


async def _is_two(certs: Callable[[], Any]) -> bool:
    held = await certs()
    return held is not None and held[2] == 2
