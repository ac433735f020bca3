"""End to end: a client sidecar calling over mTLS accepts only the destination's identity.

`backend` is one pod (service account `backend`, labelled for mTLS) behind its real
Envoy sidecar; a client sidecar (service account `client`) calls it.  The backend's
sidecar first presents a valid mesh certificate of *another* identity (`intruder`,
signed by the mesh's own CA, as a compromised or mislabelled workload would hold):
a test `resource_hook` serves it as the backend proxy's `default` Secret.  The chain
verifies against the roots, but the client's cluster checks the SPIFFE ID of the
Pods behind the Service, so every call is refused and Envoy counts a SAN mismatch
(`ssl.fail_verify_san`).  Once the backend is served its own certificate, the call
is mutual TLS and the app sees the client's SPIFFE ID in `x-forwarded-client-cert`.

The same holds for a zone-aware destination (a BackendPolicy enabling locality, the
client in the backend's zone): the client fetches the zone variant of the load
assignment, whose endpoint carries the `tlsMode` metadata, so auto-mTLS (and the
identity check) happen there too.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import EnvoyFactory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e_mesh import Sidecar, eventually, manifest_directory, start_apps, start_sidecar
from e2e_policies import backend_policy_yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from test_e2e_fault_ratelimit import APP_IP, BACKEND_NODE, POD_IP, backend_service
from test_e2e_mtls import CLIENT_ID, CLIENT_POD, POD
from test_e2e_root_replicas import replica

from xds_server.app import ControlPlane
from xds_server.cache import ResourceSet, Snapshot
from xds_server.model import Proxy
from xds_server.resources import SECRET, make_resource
from xds_server.translate.secrets import SVID_SECRET_NAME

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(150)]

CLUSTER = "outbound|8080||backend.default.svc.cluster.local"
INTRUDER_ID = "spiffe://cluster.local/ns/default/sa/intruder"
LOCALITY = backend_policy_yaml("zonal", {"loadBalancer": {"locality": {"enabled": True}}})


def zoned_slice(http_target: int, tcp_target: int) -> str:
    """`backend`'s EndpointSlice with its one endpoint in zone `a`."""
    return textwrap.dedent(
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
          - addresses: [{POD_IP!r}]
            conditions: {{ready: true}}
            zone: a
            targetRef: {{kind: Pod, name: backend-0, namespace: default}}
        """
    )


def impostor_secret(plane: ControlPlane) -> secret_pb2.Secret:
    """A `default` Secret holding a valid mesh SVID of `default/intruder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    svid = plane.ca.issue_svid("default", "intruder", key.public_key(), datetime.timedelta(hours=1))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return secret_pb2.Secret(
        name=SVID_SECRET_NAME,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=svid.chain_pem()),
            private_key=base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )


def serving_as(node_id: str, secret: secret_pb2.Secret) -> Callable[[Proxy, Snapshot], Snapshot]:
    """A resource hook: proxy `node_id` is served `secret` as its own certificate."""
    resource = make_resource(secret)

    def hook(proxy: Proxy, snapshot: Snapshot) -> Snapshot:
        if proxy.node_id != node_id:
            return snapshot
        resources = dict(snapshot.resources)
        secrets = dict(resources.get(SECRET, {}))
        secrets[resource.name] = resource
        resources[SECRET] = ResourceSet(secrets.values())
        return Snapshot(resources=resources, version=snapshot.version)

    return hook


async def held_uris(sidecar: Sidecar) -> set[str]:
    """The URI SANs of the certificates the sidecar's TLS contexts hold."""
    certs = await sidecar.envoy.admin_get_async("/certs")
    return {
        san["uri"]
        for entry in certs.get("certificates", [])
        for cert in entry.get("cert_chain", [])
        for san in cert.get("subject_alt_names", [])
        if "uri" in san
    }


@pytest.mark.parametrize("zoned", [False, True], ids=["flat", "zone-aware"])
async def test_a_destination_presenting_another_identity_is_refused(
    zoned: bool, tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {
        "backend.yaml": [backend_service(port, tcp_port, tcp_target)],
        "endpoints.yaml": [zoned_slice(port, tcp_target)],
        "pods.yaml": [POD, CLIENT_POD],
    }
    if zoned:
        files["policy.yaml"] = [LOCALITY]
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(replica(directory, tmp_path / "ca", free_port))
        builder = plane.pipeline.builder
        builder.resource_hook = serving_as(BACKEND_NODE, impostor_secret(plane))
        backend = await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=False, node_id=BACKEND_NODE,
            workload="backend-0", service_account="backend", labels={"app": "backend"},
            instance_ip=POD_IP,
            app_address=APP_IP,
        )  # fmt: skip
        client = await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=zoned,
            node_id="client-0.default", workload="client-0", service_account="client",
            labels={"app": "client"},
            **({"zone": "a"} if zoned else {}),
        )  # fmt: skip
        await eventually(
            lambda: _holds(backend, INTRUDER_ID), within=20, message="the impostor's SVID"
        )
        if zoned:

            async def fetches_the_zone_variant() -> bool:
                active = await client.active_cluster(CLUSTER)
                eds = (active or {}).get("cluster", {}).get("eds_cluster_config", {})
                return bool(eds.get("service_name") == f"{CLUSTER}|zone=a")

            await eventually(fetches_the_zone_variant, within=20, message="the zone copy")

        san_failures = f"cluster.{CLUSTER}.ssl.fail_verify_san"

        async def refused_for_its_identity() -> bool:
            status = (await client.get("backend")).status_code
            stats = await client.envoy.stats_async(filter=f"^{re.escape(san_failures)}$")
            return status == 503 and stats.get(san_failures, 0) > 0

        await eventually(
            refused_for_its_identity, within=30, interval=0.2, message="the impostor refused"
        )
        for _ in range(5):
            assert (await client.get("backend")).status_code == 503

        builder.resource_hook = None
        builder.republish()  # the backend is served its own certificate again

        async def xfcc() -> str | None:
            response = await client.get("backend")
            if response.status_code != 200:
                return None
            headers: dict[str, str] = json.loads(response.text)["headers"]
            return headers.get("x-forwarded-client-cert", "")

        seen = await eventually(xfcc, within=30, interval=0.2, message="the mTLS call")
        assert f"URI={CLIENT_ID}" in seen  # mutual TLS, zone-aware or not


async def _holds(sidecar: Sidecar, uri: str) -> bool:
    return uri in await held_uris(sidecar)
