"""Authenticated streams over a real gRPC mTLS port, with an in-process client.

The port requires a client certificate: a client with an SVID of the mesh's CA
gets a stream that carries its SPIFFE ID; one claiming another workload's node
or asking for another Secret is refused PERMISSION_DENIED; a client without a
certificate, or with one from another CA, never gets a stream.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import grpc
import pytest
from ads_fakes import secret, snapshot
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.protobuf import struct_pb2

from xds_server.ca import CertificateAuthority
from xds_server.cache import SnapshotCache
from xds_server.model import MeshSnapshot, Proxy, Workload
from xds_server.node_metadata import metadata_of
from xds_server.resources import SECRET
from xds_server.security.authn import ClientCertificateAuthenticator
from xds_server.security.guard import MeshNodeGuard
from xds_server.server import AggregatedDiscoveryServer
from xds_server.server.grpc_server import bind_grpc_server

TD = "cluster.local"
NOW = datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _root() -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def _server_cert(root_pem: bytes, root_key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    """A localhost server certificate under the test root (the python client checks DNS)."""
    key = ec.generate_private_key(ec.SECP256R1())
    root = x509.load_pem_x509_certificate(root_pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _client(ca: CertificateAuthority, namespace: str, account: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    return ca.issue_svid(namespace, account, key.public_key()).chain_pem(), _pem_key(key)


def _node_request(node_id: str, account: str, *names: str) -> DiscoveryRequest:
    metadata = struct_pb2.Struct()
    metadata.update(metadata_of(Proxy(node_id=node_id, namespace="shop", service_account=account)))
    message = DiscoveryRequest(type_url=SECRET, resource_names=names)
    message.node.id = node_id
    message.node.metadata.CopyFrom(metadata)
    return message


@pytest.fixture
async def plane() -> AsyncIterator[tuple[int, bytes, CertificateAuthority]]:
    root_pem, root_key = _root()
    ca = CertificateAuthority.from_pem(TD, root_pem, _pem_key(root_key))
    cache = SnapshotCache()
    for node_id in ("web-1.shop", "db-1.shop"):
        cache.set_snapshot(node_id, snapshot("v1", secret("default"), secret("ROOTCA")))
    pods = {
        ("shop", "web-1"): Workload(namespace="shop", name="web-1", service_account="web"),
        ("shop", "db-1"): Workload(namespace="shop", name="db-1", service_account="db"),
    }
    servicer = AggregatedDiscoveryServer(
        cache,
        authenticator=ClientCertificateAuthenticator(TD),
        authorizer=MeshNodeGuard(TD, lambda: MeshSnapshot(workloads=pods)),
    )
    chain, key = _server_cert(root_pem, root_key)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=root_pem, require_client_auth=True
    )
    server, port = bind_grpc_server(servicer, "127.0.0.1:0", credentials=credentials)
    await server.start()
    try:
        yield port, root_pem, ca
    finally:
        servicer.close()
        await server.stop(0)


async def _ask(
    port: int, root_pem: bytes, cert: tuple[bytes, bytes] | None, request: DiscoveryRequest
) -> tuple[grpc.StatusCode | None, int]:
    """The stream's status code (None while it serves) and how many Secrets came back."""
    credentials = grpc.ssl_channel_credentials(
        root_pem, cert[1] if cert else None, cert[0] if cert else None
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        try:
            await call.write(request)
            response = await call.read()
        except grpc.aio.AioRpcError as error:
            return error.code(), 0
        if response is grpc.aio.EOF:
            return await call.code(), 0
        call.cancel()
        return None, len(response.resources)


async def test_a_client_with_its_own_svid_gets_its_secrets(
    plane: tuple[int, bytes, CertificateAuthority],
) -> None:
    port, root_pem, ca = plane
    got = await _ask(
        port,
        root_pem,
        _client(ca, "shop", "web"),
        _node_request("web-1.shop", "web", "default", "ROOTCA"),
    )
    assert got == (None, 2)


async def test_claiming_another_workloads_node_is_permission_denied(
    plane: tuple[int, bytes, CertificateAuthority],
) -> None:
    port, root_pem, ca = plane
    asked = _node_request("db-1.shop", "db", "default")
    assert await _ask(port, root_pem, _client(ca, "shop", "web"), asked) == (
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    )


async def test_asking_for_another_secret_is_permission_denied(
    plane: tuple[int, bytes, CertificateAuthority],
) -> None:
    port, root_pem, ca = plane
    asked = _node_request("web-1.shop", "web", "default", "db")
    assert await _ask(port, root_pem, _client(ca, "shop", "web"), asked) == (
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    )


async def test_no_certificate_or_a_foreign_one_cannot_open_a_stream(
    plane: tuple[int, bytes, CertificateAuthority],
) -> None:
    port, root_pem, _ = plane
    foreign_root, foreign_key = _root()
    foreign = CertificateAuthority.from_pem(TD, foreign_root, _pem_key(foreign_key))
    asked = _node_request("web-1.shop", "web", "default")
    for cert in (None, _client(foreign, "shop", "web")):
        assert await _ask(port, root_pem, cert, asked) == (grpc.StatusCode.UNAVAILABLE, 0)
