"""Pairs of real sidecars with mutual TLS, for the security end-to-end tests (issue 9).

`security_plane` runs a control plane with its own CA directory (a root rotation
must not touch the root other tests share) and a TTL of the test's choosing.
`start_mesh_sidecar` starts a real Envoy for one identity (namespace, service
account): it proves that identity to the xDS port with a client certificate the
plane signs (`e2e_mesh.xds_credential`, as for `xds-server bootstrap`), and binds its
outbound listeners on an address of its own, so that several sidecars on one
host never share a port (Envoy binds with SO_REUSEPORT: two sidecars on the same
address would split the connections between them).  `MeshSidecar` reads what
Envoy holds: `/certs` (`held_certificate`), counters, its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from conftest import EnvoyFactory
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from e2e_mesh import plane_settings, xds_credential

from xds_server.app import ControlPlane
from xds_server.bootstrap import XdsClientTls, render_bootstrap
from xds_server.envoy_process import EnvoyProcess
from xds_server.security.certificates import serial_hex
from xds_server.settings import SecuritySettings


def pod_yaml(
    name: str, namespace: str, service_account: str, labels: dict[str, str], ip: str = ""
) -> str:
    """A running Pod; `security.xds-server.io/tlsMode: mtls` in `labels` marks it meshed."""
    status = f"status: {{podIP: {ip!r}, phase: Running}}\n" if ip else ""
    return (
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Pod
            metadata:
              name: {name}
              namespace: {namespace}
              labels: {labels!r}
            spec:
              serviceAccountName: {service_account}
              containers: [{{name: app, image: {name}}}]
            """
        )
        + status
    )


@contextlib.asynccontextmanager
async def security_plane(
    directory: Path, free_port: Callable[[], int], ca_dir: Path, svid_ttl_seconds: float
) -> AsyncIterator[ControlPlane]:
    """An in-process control plane on `directory` with its root CA in `ca_dir` and
    workload certificates living `svid_ttl_seconds`; stopped on exit."""
    settings = plane_settings(
        f"file:{directory}",
        free_port,
        security=SecuritySettings(ca_dir=ca_dir, svid_ttl_seconds=svid_ttl_seconds),
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


def xds_credential_serial(tls: XdsClientTls | None) -> str | None:
    """The serial (Envoy's hex) of a sidecar's xDS client certificate, if it has one."""
    if tls is None or tls.certificate is None:
        return None
    source = tls.certificate
    pem = source["inline_string"].encode() if "inline_string" in source else None
    leaf = x509.load_pem_x509_certificates(pem or Path(source["filename"]).read_bytes())[0]
    return serial_hex(leaf)


@dataclass(frozen=True)
class HeldCertificate:
    """What Envoy's `/certs` shows of a proxy's SVID and trusted roots, over all of its
    TLS contexts (each listener chain and cluster holds its own copy)."""

    serials: frozenset[str]
    """The serials of the SVIDs (certificates with a URI SAN): one once every context
    has the same."""
    uris: frozenset[str]
    root_serials: frozenset[str]
    """The serials of the CA certificates Envoy validates peers with (ROOTCA)."""

    @property
    def serial(self) -> str | None:
        """The serial every context holds, or None while they differ."""
        return next(iter(self.serials)) if len(self.serials) == 1 else None


def held_certificate(certs: Any, xds_serial: str | None = None) -> HeldCertificate | None:
    """The SVIDs and roots of `/certs`, or None before Envoy holds an SVID.  The xDS
    cluster's context (the bootstrap's credential, serial `xds_serial`) is left out."""
    serials: set[str] = set()
    uris: set[str] = set()
    roots: set[str] = set()
    for entry in certs.get("certificates", []):
        chain = [cert["serial_number"] for cert in entry.get("cert_chain", [])]
        if xds_serial is not None and xds_serial in chain:
            continue
        roots.update(ca["serial_number"] for ca in entry.get("ca_cert", []))
        for cert in entry.get("cert_chain", []):
            names = [s["uri"] for s in cert.get("subject_alt_names", []) if "uri" in s]
            if names:
                serials.add(cert["serial_number"])
                uris.update(names)
    if not serials:
        return None
    return HeldCertificate(frozenset(serials), frozenset(uris), frozenset(roots))


@dataclass
class MeshSidecar:
    """A real Envoy sidecar of one identity; its outbound listeners bind `address`."""

    envoy: EnvoyProcess
    node_id: str
    address: str
    outbound_port: int
    xds_serial: str | None
    """The serial of its xDS client certificate (`/certs` shows that context too)."""

    async def get(self, host: str, path: str = "/") -> httpx.Response:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.get(
                f"http://{self.address}:{self.outbound_port}{path}", headers={"Host": host}
            )

    async def status(self, host: str, path: str = "/") -> int | str:
        """The HTTP status of a call through this sidecar, or the transport error's name."""
        try:
            return (await self.get(host, path)).status_code
        except httpx.TransportError as error:
            return type(error).__name__

    async def certificates(self) -> HeldCertificate | None:
        certs = await self.envoy.admin_get_async("/certs")
        return held_certificate(certs, self.xds_serial)

    async def counter(self, name: str) -> int:
        return (await self.envoy.stats_async(filter=f"^{re.escape(name)}$")).get(name, 0)


async def start_mesh_sidecar(
    envoy_factory: EnvoyFactory,
    plane: ControlPlane,
    *,
    node_id: str,
    service_account: str,
    address: str,
    outbound_port: int,
    **node: Any,
) -> MeshSidecar:
    """A LIVE sidecar for `node_id` (`POD.NAMESPACE`) running as `service_account`;
    `node`: more of `render_bootstrap`'s (`workload`, `labels`, `instance_ip`, ...)."""
    namespace = node_id.rpartition(".")[2]
    xds_tls = xds_credential(plane.xds_port, namespace, service_account)
    bootstrap = render_bootstrap(
        node_id=node_id,
        namespace=namespace,
        service_account=service_account,
        xds_address=f"127.0.0.1:{plane.xds_port}",
        admin_port=0,
        outbound_address=address,
        outbound_port=outbound_port,
        xds_tls=xds_tls,
        **node,
    )
    envoy = envoy_factory(bootstrap, name=node_id.split(".")[0], start=False)
    await envoy.start_async()
    await envoy.wait_live_async()
    return MeshSidecar(envoy, node_id, address, outbound_port, xds_credential_serial(xds_tls))


def signed_by(chain_pem: bytes, root: x509.Certificate) -> bool:
    """Whether the leaf of `chain_pem` carries `root`'s signature."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def backend_manifests(pod_ip: str, http_target: int, tcp_port: int, tcp_target: int) -> list[str]:
    """`backend` in `default`: HTTP on 8080 and a TCP port, one meshed pod at `pod_ip`."""
    service = textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: backend, namespace: default}}
        spec:
          selector: {{app: backend}}
          ports:
            - {{name: http, port: 8080, targetPort: {http_target}}}
            - {{name: tcp, port: {tcp_port}, targetPort: {tcp_target}}}
        """
    )
    endpoints = textwrap.dedent(
        f"""\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: backend-slice
          namespace: default
          labels: {{kubernetes.io/service-name: backend}}
        addressType: IPv4
        ports:
          - {{name: http, port: {http_target}, protocol: TCP}}
          - {{name: tcp, port: {tcp_target}, protocol: TCP}}
        endpoints:
          - addresses: [{pod_ip!r}]
            conditions: {{ready: true}}
        """
    )
    pod = pod_yaml(
        "backend-0",
        "default",
        "backend",
        {"app": "backend", "security.xds-server.io/tlsMode": "mtls"},
        pod_ip,
    )
    return [service, endpoints, pod]


def peer_authentication_yaml(mode: str, namespace: str = "default") -> str:
    """A namespace-wide PeerAuthentication of `mode`."""
    return textwrap.dedent(
        f"""\
        apiVersion: policy.xds-server.dev/v1alpha1
        kind: PeerAuthentication
        metadata: {{name: default, namespace: {namespace}}}
        spec:
          mtls: {{mode: {mode}}}
        """
    )


LOAD_SCRIPT = Path(__file__).with_name("e2e_mesh_load.py")


@contextlib.asynccontextmanager
async def mesh_load(
    *, seconds: float, max_requests: int, threads: int = 2, **targets: str
) -> AsyncIterator[dict[str, Any]]:
    """`e2e_mesh_load` in another process for the block (`targets`: `http`, `host`,
    `tcp`); the yielded dict holds its outcome once the block has ended, and the block
    waits for the load to end."""
    arguments = [f"--{name}={value}" for name, value in targets.items()]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LOAD_SCRIPT),
        f"--seconds={seconds}",
        f"--max-requests={max_requests}",
        f"--threads={threads}",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
    )
    outcome: dict[str, Any] = {}
    try:
        yield outcome
        out, _ = await asyncio.wait_for(process.communicate(), timeout=seconds + 30)
        outcome.update(json.loads(out))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
