"""End to end: principal and namespace rules against real SPIFFE certificates in a real Envoy.

The RBAC filters are the ones translation builds (`translate.authorization`)
for the policies below; the listener in front of them terminates mutual TLS
with SVIDs from the project's certificate authority, as a sidecar's inbound
side does, so the rules see the caller's URI SAN exactly as in the mesh.
Callers from two namespaces and with several service accounts show that a
principal (Istio's form and with a suffix wildcard) and a namespace allow,
that everything else is denied once an ALLOW policy applies, and that DENY
beats ALLOW.  The sidecars' own inbound TLS is covered with PeerAuthentication.
"""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import EnvoyFactory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from test_translate_authorization import policy
from translate_builders import mesh

from xds_server.ca.authority import CertificateAuthority
from xds_server.envoy_process import free_port
from xds_server.model.authorization import workload_authorization
from xds_server.translate.authorization import authorize_http
from xds_server.translate.filters import http_connection_manager

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]

TRUST_DOMAIN = "cluster.local"
TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
POLICIES = [
    policy(
        "allow-callers",
        {
            "selector": {"matchLabels": {"app": "backend"}},
            "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]},
                {"from": [{"source": {"namespaces": ["ops"]}}]},
            ],
        },
    ),
    policy(
        "deny-admin-secrets",
        {
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"principals": ["*/sa/admin"]}}],
                    "to": [{"operation": {"paths": ["/secret*"]}}],
                }
            ],
        },
    ),
]


def pem_files(
    directory: Path, name: str, authority: CertificateAuthority, ns: str, sa: str
) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    svid = authority.issue_svid(ns, sa, key.public_key(), datetime.timedelta(hours=1))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(svid.chain_pem())
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def bootstrap(port: int, cert: tuple[str, str], root: str) -> str:
    hcm = http_connection_manager("inbound_backend", "inbound")
    hcm.route_config.CopyFrom(
        route_pb2.RouteConfiguration(
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name="app",
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            direct_response=route_components_pb2.DirectResponseAction(status=200),
                        )
                    ],
                )
            ]
        )
    )
    governing = workload_authorization(mesh(*POLICIES), "default", (("app", "backend"),))
    authorize_http(hcm, governing, port)
    hcm_json: dict[str, Any] = json_format.MessageToDict(hcm)
    hcm_json["@type"] = f"type.googleapis.com/{hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name}"
    tls = {
        "@type": f"type.googleapis.com/{TLS_CONTEXT}",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [
                {"certificate_chain": {"filename": cert[0]}, "private_key": {"filename": cert[1]}}
            ],
            "validation_context": {"trusted_ca": {"filename": root}},
        },
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": tls,
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm_json,
                                }
                            ],
                        }
                    ],
                }
            ]
        },
    }
    return yaml.safe_dump(json.loads(json.dumps(config)))


CALLERS = [
    ("shop", "frontend", "/", 200),  # the named principal
    ("shop", "other", "/", 403),  # its namespace is not enough
    ("ops", "admin", "/", 200),  # the ops namespace
    ("ops", "admin", "/secret/key", 403),  # DENY beats ALLOW
    ("ops", "deployer", "/secret/key", 200),  # the DENY rule names */sa/admin only
    ("test", "x", "/", 403),  # neither
]


async def test_principal_and_namespace_rules_see_the_callers_spiffe_id(
    tmp_path: Path, envoy_factory: EnvoyFactory
) -> None:
    authority = CertificateAuthority.generate_root(TRUST_DOMAIN)
    root = tmp_path / "root.pem"
    root.write_bytes(authority.trust_anchor.public_bytes(serialization.Encoding.PEM))
    port = free_port()
    server = pem_files(tmp_path, "backend", authority, "default", "backend")
    envoy = envoy_factory(bootstrap(port, server, str(root)), name="backend")
    await envoy.wait_live_async()
    for namespace, account, path, expected in CALLERS:
        context = ssl.create_default_context(cafile=str(root))
        context.check_hostname = False  # an SVID names a SPIFFE ID, not a host
        context.load_cert_chain(
            *pem_files(tmp_path, f"{namespace}-{account}", authority, namespace, account)
        )
        async with httpx.AsyncClient(verify=context, timeout=5) as client:
            response = await client.get(f"https://127.0.0.1:{port}{path}")
        assert response.status_code == expected, (namespace, account, path, response.text)
    stats = await envoy.stats_async(filter="rbac")
    assert (
        stats["http.inbound_backend.rbac.deny.policy.default/deny-admin-secrets[rule-0].denied"]
        == 1
    )
    assert stats["http.inbound_backend.rbac.allow.denied"] == 2
