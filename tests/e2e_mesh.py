"""A small mesh for end-to-end tests: a manifest directory, sample upstreams, a sidecar.

The control plane runs in the test's event loop (so tests can reach into it,
e.g. the NACK seam) or as a real `xds-server serve` process (so a test can
kill it).  Upstream "pods" are sample apps on their own loopback IPs.

The pieces: manifests (`service_yaml`, `slice_yaml`, `write_documents`,
`manifest_directory`), upstreams (`start_apps`), the control plane
(`running_control_plane`, `plane_settings`) and its admin API (`admin_get`,
`admin_json`), sidecars (`start_sidecar`: a client, or with `workload`,
`labels`, `instance_ip`, ... a pod's own) and what Envoy runs (`Sidecar`:
`active_cluster`, `cluster_hosts`), and `eventually`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import plane_process
from envoy.config.cluster.v3 import cluster_pb2

from xds_server.app import ControlPlane
from xds_server.bootstrap import XdsClientTls, render_bootstrap
from xds_server.cache import LayeredResources, ResourceSet, Snapshot
from xds_server.envoy_process import EnvoyProcess
from xds_server.model import Proxy
from xds_server.resources import CLUSTER, make_resource
from xds_server.sample_app import SampleApp, start_sample_app
from xds_server.security import CertificateIssuer
from xds_server.security.roots import DirectoryRootStore
from xds_server.security.xds_auth import sign_client_certificate
from xds_server.security.xds_client import inline_client_tls, new_key_and_csr
from xds_server.settings import DebounceSettings, SecuritySettings, Settings

SERVICE_PORT = 8080


def service_yaml(name: str, port: int = SERVICE_PORT, namespace: str = "default") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          selector: {{app: {name}}}
          ports:
            - {{name: http, port: {port}, targetPort: {port}}}
        """
    )


def slice_yaml(
    service: str, addresses: Sequence[str], port: int, namespace: str = "default"
) -> str:
    endpoints = "".join(
        f"  - addresses: [{address!r}]\n    conditions: {{ready: true}}\n" for address in addresses
    )
    return textwrap.dedent(
        f"""\
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: {service}-slice
              namespace: {namespace}
              labels: {{kubernetes.io/service-name: {service}}}
            addressType: IPv4
            ports:
              - {{name: http, port: {port}, protocol: TCP}}
            """
    ) + ("endpoints:\n" + endpoints if addresses else "endpoints: []\n")


def write_documents(path: Path, *documents: str) -> None:
    """Write atomically, as editors and `kubectl`-like tools do."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("---\n".join(documents))
    staging.replace(path)


def manifest_directory(
    tmp_path: Path, files: Mapping[str, Sequence[str]], name: str = "manifests"
) -> Path:
    """A new directory `tmp_path/name` holding `files` (file name -> its documents)."""
    directory = tmp_path / name
    directory.mkdir()
    for file_name, documents in files.items():
        write_documents(directory / file_name, *documents)
    return directory


async def start_apps(
    stack: contextlib.AsyncExitStack, port: int, *apps: tuple[str, str, str]
) -> list[SampleApp]:
    """Sample apps, each `(service, version, ip)` listening on `port`; closed with `stack`."""
    started = []
    for service, version, ip in apps:
        app = await start_sample_app(service, version, ip, port)
        stack.push_async_callback(app.close)
        started.append(app)
    return started


@dataclass
class Sidecar:
    envoy: EnvoyProcess
    node_id: str
    outbound_port: int

    async def get(self, host: str, path: str = "/") -> httpx.Response:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.get(
                f"http://127.0.0.1:{self.outbound_port}{path}", headers={"Host": host}
            )

    async def who_answers(self, host: str) -> str:
        """`service version` of the upstream that answered, or `HTTP <code>`."""
        response = await self.get(host)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        body: dict[str, Any] = json.loads(response.text)
        return f"{body['service']} {body['version']}"

    async def cluster_names(self) -> set[str]:
        return {status["name"] for status in await self.envoy.clusters_async()}

    async def active_cluster(self, name: str) -> dict[str, Any] | None:
        """Cluster `name`'s entry in Envoy's config dump (`cluster`, `last_updated`), if active."""
        dump = await self.envoy.config_dump_async(resource="dynamic_active_clusters")
        for entry in dump.get("configs", []):
            if entry.get("cluster", {}).get("name") == name:
                return dict(entry)
        return None

    async def cluster_hosts(self, name: str) -> dict[str, dict[str, Any]]:
        """Cluster `name`'s hosts in Envoy's `/clusters`, by IP ({} without the cluster)."""
        for status in await self.envoy.clusters_async():
            if status["name"] == name:
                return {
                    host["address"]["socket_address"]["address"]: host
                    for host in status.get("host_statuses", [])
                }
        return {}


_PLANES: list[weakref.ref[ControlPlane]] = []
"""In-process control planes of the test run (`register_plane`; conftest registers every
one made), whose CA signs the xDS credentials of the sidecars started against them."""


def register_plane(plane: ControlPlane) -> None:
    """Let sidecars bootstrapped for `plane.xds_port` get their credential from `plane`."""
    _PLANES[:] = [ref for ref in _PLANES if ref() is not None]
    _PLANES.append(weakref.ref(plane))


def _plane_on(xds_port: int) -> ControlPlane | None:
    for ref in reversed(_PLANES):
        plane = ref()
        if plane is not None and plane.xds_port == xds_port:
            return plane
    return None


def xds_credential(xds_port: int, namespace: str, service_account: str) -> XdsClientTls | None:
    """The sidecar's xDS credential (inline), signed as `xds-server bootstrap` has it
    signed: by the registered plane on `xds_port`, else by the test run's CA directory
    (`serve` processes of `plane_process` share it).  None for an insecure plane."""
    key_pem, csr_pem = new_key_and_csr()
    plane = _plane_on(xds_port)
    if plane is not None:
        if plane.settings.security.insecure_xds:
            return None
        signed = plane.sign_xds_client_certificate(namespace, service_account, csr_pem, 3600.0)
    else:
        signed = sign_client_certificate(
            CertificateIssuer(DirectoryRootStore(TEST_CA_DIR, TRUST_DOMAIN).load().authority),
            SecuritySettings(),
            namespace,
            service_account,
            csr_pem,
            3600.0,
        )
    return inline_client_tls(signed, key_pem)


def sidecar_bootstrap(
    node_id: str,
    xds_port: int,
    outbound_port: int,
    *,
    delta: bool,
    namespace: str = "default",
    xds_tls: XdsClientTls | bool | None = True,
    **node: Any,
) -> str:
    """A sidecar's bootstrap; `node`: more of `render_bootstrap`'s (`workload`, `labels`,
    `instance_ip`, `app_address`, `zone`: a pod's own sidecar, with an inbound side).

    It speaks TLS to the control plane with a client certificate of its namespace and
    service account (`xds_credential`), unless `xds_tls` is False (plaintext) or a
    credential of the test's own."""
    if xds_tls is True:
        tls = xds_credential(xds_port, namespace, node.get("service_account", "default"))
    else:
        tls = xds_tls or None
    return render_bootstrap(
        node_id=node_id,
        namespace=namespace,
        xds_address=f"127.0.0.1:{xds_port}",
        admin_port=0,
        delta=delta,
        outbound_port=outbound_port,
        xds_tls=tls,
        **node,
    )


async def eventually(
    check: Any, *, within: float = 10.0, interval: float = 0.05, message: str = ""
) -> Any:
    """Await `check()` until truthy (bounded); return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    while True:
        try:
            last = await check()
        except (httpx.HTTPError, OSError) as error:
            last = error
        else:
            if last:
                return last
        if loop.time() > deadline:
            raise AssertionError(f"{message or 'condition'} not met in {within}s: {last!r}")
        await asyncio.sleep(interval)


REJECTED_CLUSTER = "rejected-by-envoy"


def with_invalid_cluster(proxy: Proxy, snapshot: Snapshot) -> Snapshot:
    """Test seam for the builder's `resource_hook`: add a cluster Envoy must reject
    (a negative connect timeout passes our checks but not Envoy's validation)."""
    bad = cluster_pb2.Cluster(name=REJECTED_CLUSTER, type=cluster_pb2.Cluster.STATIC)
    bad.connect_timeout.FromSeconds(-1)
    clusters = snapshot.get(CLUSTER)
    assert isinstance(clusters, LayeredResources)
    resources = dict(snapshot.resources)
    resources[CLUSTER] = LayeredResources(ResourceSet([make_resource(bad)]), *clusters.layers)
    return Snapshot(resources=resources, version=snapshot.version + "-bad")


TRUST_DOMAIN = SecuritySettings.trust_domain
TEST_CA_DIR = plane_process.TEST_CA_DIR
"""Where test control planes keep their root CA (generated by the first)."""


def plane_settings(source: str, free_port: Callable[[], int], **overrides: Any) -> Settings:
    """A test control plane's settings: `source`, free loopback ports, a fast debounce,
    the CA in one directory of the test run (as replicas sharing a root)."""
    # Test sidecars prove themselves with client certificates, in Kubernetes mode too.
    overrides.setdefault(
        "security", SecuritySettings(ca_dir=TEST_CA_DIR, xds_client_auth="certificate")
    )
    return Settings(
        source=source,
        xds_listen=f"127.0.0.1:{free_port()}",
        admin_listen=f"127.0.0.1:{free_port()}",
        debounce=DebounceSettings(quiet=0.02, max_delay=0.2, endpoint_quiet=0.005),
        grace_seconds=0.5,
        **overrides,
    )


async def admin_get(plane: ControlPlane, path: str, **params: str) -> httpx.Response:
    """GET `path` from the control plane's admin API."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(f"http://127.0.0.1:{plane.admin_port}{path}", params=params)


async def admin_json(plane: ControlPlane, path: str, **params: str) -> Any:
    """The JSON the admin API answers at `path` (an error status raises)."""
    response = await admin_get(plane, path, **params)
    response.raise_for_status()
    return response.json()


@contextlib.asynccontextmanager
async def running_control_plane(
    directory: Path, free_port: Callable[[], int], **overrides: Any
) -> AsyncIterator[ControlPlane]:
    """An in-process control plane on `directory`, fast debounce, stopped on exit;
    `overrides` of `plane_settings`."""
    plane = ControlPlane(plane_settings(f"file:{directory}", free_port, **overrides))
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        yield plane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start_sidecar(
    envoy_factory: Callable[..., EnvoyProcess],
    xds_port: int,
    outbound_port: int,
    *,
    delta: bool,
    node_id: str = "client-0.default",
    namespace: str = "default",
    **node: Any,
) -> Sidecar:
    """A real Envoy sidecar in `namespace`, LIVE (its first CDS and LDS applied): a client,
    or with `node` (`sidecar_bootstrap`) a pod's own."""
    envoy = envoy_factory(
        sidecar_bootstrap(
            node_id, xds_port, outbound_port, delta=delta, namespace=namespace, **node
        ),
        name=node_id.split(".")[0],
        start=False,
    )
    await envoy.start_async()
    await envoy.wait_live_async()
    return Sidecar(envoy, node_id, outbound_port)
