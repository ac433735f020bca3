"""End to end: two in-process control planes (replicas) share one CA directory; a root
rotation started on the first reaches the second within its poll period, and proxies of
either keep trusting each other's certificates through the whole rotation.

Each plane serves a real Envoy a TLS probe listener with its SDS Secrets (as
`test_e2e_rotation` does).  HTTPS clients in other processes call the first plane's
Envoy verifying against the *second* plane's published bundle, and the second's Envoy
against the first's: a replica that learnt of the new root late, or re-issued early,
would fail handshakes.  None fails; the second plane shows the new root in
`/api/certificates`, its Envoy trusts both roots during the overlap, then holds a
certificate signed by the new root, and the new root alone at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import EnvoyFactory
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from e2e_mesh import admin_json, eventually, plane_settings, register_plane, start_sidecar
from test_e2e_rotation import tls_load, with_tls_listener

from xds_server.app import ControlPlane
from xds_server.security.certificates import RootRotation
from xds_server.settings import SecuritySettings

POLL = 1.0


@contextlib.asynccontextmanager
async def replica(
    manifests: Path, ca_dir: Path, free_port: Callable[[], int]
) -> AsyncIterator[ControlPlane]:
    settings = plane_settings(
        f"file:{manifests}",
        free_port,
        security=SecuritySettings(ca_dir=ca_dir, root_poll_seconds=POLL),
    )
    plane = ControlPlane(settings)
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        register_plane(plane)
        yield plane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def root_fingerprints(plane: ControlPlane) -> list[str]:
    listed = await admin_json(plane, "/api/certificates")
    return sorted(root["fingerprint"] for root in listed["trust_roots"])


async def test_a_rotation_on_one_replica_reaches_the_other_with_no_failed_handshake(
    envoy_factory: EnvoyFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    manifests, ca_dir = tmp_path / "manifests", tmp_path / "ca"
    for directory in (manifests, tmp_path / "a", tmp_path / "b"):
        directory.mkdir()
    async with (
        replica(manifests, ca_dir, free_port) as first,
        replica(manifests, ca_dir, free_port) as second,
    ):
        assert first.issuer.ca.certificate == second.issuer.ca.certificate  # one shared root
        planes = (first, second)
        probes: list[int] = []
        envoys = []
        for plane, node in ((first, "client-0.default"), (second, "client-1.default")):
            probes.append(free_port())
            plane.pipeline.builder.resource_hook = with_tls_listener(probes[-1])
            sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=True,
                                          node_id=node)  # fmt: skip
            envoys.append(sidecar.envoy)

        async def held(index: int) -> tuple[str, int] | None:
            """(serial, trusted CAs) of the SDS certificate Envoy `index` serves: the entry of
            `/certs` holding its plane's current SVID (the xDS client credential is another)."""
            plane = planes[index]
            issued = {int(c.serial, 16) for c in plane.issuer.certificates()}
            certs = await envoys[index].admin_get_async("/certs")
            for entry in certs.get("certificates", []):
                for cert in entry.get("cert_chain", []):
                    if int(cert["serial_number"], 16) in issued:
                        return cert["serial_number"], len(entry.get("ca_cert", []))
            return None

        for index in (0, 1):
            await eventually(lambda i=index: held(i), within=10, message="Envoy holds an SVID")

        def bundle_of(plane: ControlPlane) -> Callable[[], bytes]:
            return lambda: plane.issuer.bundle.to_pem()

        # Each Envoy is called verifying against the *other* plane's bundle.
        async with (
            tls_load(probes[0], bundle_of(second), tmp_path / "a", 12.0, 2) as on_first,
            tls_load(probes[1], bundle_of(first), tmp_path / "b", 12.0, 2) as on_second,
        ):
            await asyncio.sleep(1.0)
            old_root = second.issuer.ca.trust_anchor
            started = await first.rotate_root(overlap_seconds=6.0)
            rotated_at = time.time()

            async def second_has_both() -> list[str] | None:
                shown = await root_fingerprints(second)
                return shown if len(shown) == 2 else None

            async def adopted_rotation() -> RootRotation | None:
                return second.issuer.rotation

            adopted = await eventually(adopted_rotation, within=POLL + 1.0, interval=0.02)
            assert time.time() - rotated_at < POLL + 1.0  # one poll, and a loaded machine
            assert adopted.new_serial == started.new_serial
            both = await eventually(second_has_both, within=2.0, message="both roots shown")
            assert both == await root_fingerprints(first)
            assert adopted.reissue_at == pytest.approx(started.reissue_at, abs=0.001)

            async def second_envoy_trusts_both() -> bool:
                found = await held(1)
                return found is not None and found[1] == 2

            await eventually(second_envoy_trusts_both, within=3, message="Envoy trusts both")
            new_root = x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())

            async def on_new_root(index: int) -> str | None:
                found = await held(index)
                (issued,) = planes[index].issuer.certificates()
                if found is None or int(found[0], 16) != int(issued.serial, 16):
                    return None
                leaf = x509.load_pem_x509_certificate(issued.certificate_chain)
                try:
                    leaf.verify_directly_issued_by(new_root)
                except (ValueError, TypeError, InvalidSignature):
                    return None
                return found[0]

            await asyncio.sleep(max(0.0, started.reissue_at - time.time()))
            for index in (0, 1):
                await eventually(lambda i=index: on_new_root(i), within=3, message="new root")
            assert second.issuer.ca.trust_anchor == new_root != old_root

            await asyncio.sleep(max(0.0, started.overlap_ends_at - time.time()) + 1.5)
            for index in (0, 1):
                found = await held(index)
                assert found is not None and found[1] == 1  # the new root alone
            assert await root_fingerprints(second) == await root_fingerprints(first)
            assert len(await root_fingerprints(second)) == 1
        for outcome in (on_first, on_second):
            assert outcome["failures"] == [], outcome["failures"][:5]
            assert outcome["ok"] > 100
        assert not (ca_dir / "previous-root-cert.pem").exists()
