"""The ADS server's authentication seam, against fake streams.

A stream whose credential proves no identity is refused UNAUTHENTICATED before
anything is served; an authenticated stream carries its principal into every
callback; a node or resource names the authorizer denies end the stream
PERMISSION_DENIED, logged with the peer, the identity and what was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from ads_fakes import FakeStream, delta_request, request, secret, snapshot
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import struct_pb2
from test_server_callbacks import Recorder

from xds_server.ca import CertificateAuthority
from xds_server.cache import SnapshotCache
from xds_server.model import MeshSnapshot, Proxy, Workload
from xds_server.node_metadata import metadata_of
from xds_server.resources import SECRET
from xds_server.security.authn import ClientCertificateAuthenticator
from xds_server.security.guard import MeshNodeGuard
from xds_server.security.xds_tls import issue_server_tls
from xds_server.server import AggregatedDiscoveryServer
from xds_server.server.auth import (
    AuthenticationError,
    PeerIdentity,
    bearer_token,
    peer_certificate_pem,
)

ALICE = "spiffe://cluster.local/ns/default/sa/alice"
BOB = "spiffe://cluster.local/ns/default/sa/bob"


class PeerAuthenticator:
    """Knows principals by peer address, as a verified certificate would name them."""

    def __init__(self, principals: dict[str, str]) -> None:
        self.principals = principals

    async def authenticate(self, context: Any) -> PeerIdentity:
        principal = self.principals.get(context.peer())
        if principal is None:
            raise AuthenticationError(f"{context.peer()} presented no client certificate")
        return PeerIdentity(principal, "x509")


class OwnNodeOnly:
    """A node id must be the identity's last path segment; only `default` and `ROOTCA` secrets."""

    def authorize_node(self, identity: PeerIdentity, node: Node) -> str | None:
        owner = identity.principal.rsplit("/", 1)[-1]
        if not node.id.startswith(owner + "."):
            return f"{identity.principal} may not claim node {node.id}"
        return None

    def authorize_names(
        self, identity: PeerIdentity, node: Node, type_url: str, names: Sequence[str]
    ) -> str | None:
        others = [
            name for name in names if type_url == SECRET and name not in {"default", "ROOTCA"}
        ]
        return f"secret {others[0]} is not {identity.principal}'s" if others else None


def servicer(recorder: Recorder) -> AggregatedDiscoveryServer:
    cache = SnapshotCache()
    for node_id in ("alice.default", "bob.default"):
        cache.set_snapshot(node_id, snapshot("v1", secret("default"), secret("ROOTCA")))
    return AggregatedDiscoveryServer(
        cache,
        callbacks=recorder,
        authenticator=PeerAuthenticator({"ipv4:127.0.0.1:7001": ALICE, "ipv4:127.0.0.1:7002": BOB}),
        authorizer=OwnNodeOnly(),
    )


@pytest.mark.parametrize("delta", [False, True])
async def test_an_authenticated_stream_is_served_and_callbacks_see_its_identity(
    delta: bool,
) -> None:
    recorder = Recorder()
    stream = FakeStream(servicer(recorder), delta=delta, peer="ipv4:127.0.0.1:7001")
    first = (
        delta_request(SECRET, ["default", "ROOTCA"], node_id="alice.default")
        if delta
        else request(SECRET, "default", "ROOTCA", node_id="alice.default")
    )
    stream.send(first)
    response = await stream.response()
    assert len(response.resources) == 2
    await stream.end()
    assert {event.stream.identity for event in recorder.events if event.stream} == {ALICE}


async def test_a_stream_without_a_credential_is_refused_unauthenticated() -> None:
    recorder = Recorder()
    server = servicer(recorder)
    stream = FakeStream(server, peer="ipv4:127.0.0.1:7999")
    stream.send(request(SECRET, "default", node_id="alice.default"))
    assert await stream.aborted() == grpc.StatusCode.UNAUTHENTICATED
    assert "no client certificate" in stream.context.details
    assert stream.context.written.empty()
    assert recorder.kinds() == ["refused"]
    assert recorder.of("refused")[0].detail == ("ipv4:127.0.0.1:7999", "unauthenticated")
    assert server.streams() == []


async def test_claiming_another_identitys_node_is_permission_denied_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    stream = FakeStream(servicer(recorder), peer="ipv4:127.0.0.1:7001")
    with caplog.at_level(logging.WARNING):
        stream.send(request(SECRET, "default", node_id="bob.default"))
        assert await stream.aborted() == grpc.StatusCode.PERMISSION_DENIED
    assert stream.context.details == f"{ALICE} may not claim node bob.default"
    assert stream.context.written.empty()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("denied"))
    assert "ipv4:127.0.0.1:7001" in line and ALICE in line and "bob.default" in line
    assert recorder.of("failed")[0].detail == "PERMISSION_DENIED"


@pytest.mark.parametrize("delta", [False, True])
async def test_asking_for_another_identitys_secret_is_permission_denied(delta: bool) -> None:
    recorder = Recorder()
    stream = FakeStream(servicer(recorder), delta=delta, peer="ipv4:127.0.0.1:7001")
    asked = (
        delta_request(SECRET, ["default", "bob-key"], node_id="alice.default")
        if delta
        else request(SECRET, "default", "bob-key", node_id="alice.default")
    )
    stream.send(asked)
    assert await stream.aborted() == grpc.StatusCode.PERMISSION_DENIED
    assert stream.context.details == f"secret bob-key is not {ALICE}'s"
    assert stream.context.written.empty()


async def test_without_an_authenticator_streams_are_anonymous() -> None:
    recorder = Recorder()
    cache = SnapshotCache()
    cache.set_snapshot("bob.default", snapshot("v1", secret("default")))
    stream = FakeStream(AggregatedDiscoveryServer(cache, callbacks=recorder))
    stream.send(request(SECRET, "default", node_id="bob.default"))
    assert len((await stream.response()).resources) == 1
    await stream.end()
    assert {event.stream.identity for event in recorder.events if event.stream} == {None}


class Context:
    def __init__(self, auth: dict[str, list[bytes]], metadata: list[tuple[str, str]]) -> None:
        self.auth, self.metadata = auth, metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata


def test_credentials_are_read_from_the_tls_connection_and_the_authorization_header() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\n..."
    assert peer_certificate_pem(Context({"x509_pem_cert": [pem]}, [])) == pem
    assert peer_certificate_pem(Context({}, [])) is None
    assert bearer_token(Context({}, [("authorization", "Bearer abc.def")])) == "abc.def"
    assert bearer_token(Context({}, [("authorization", "Basic abc")])) is None
    assert bearer_token(Context({}, [("authorization", "Bearer ")])) is None
    assert bearer_token(Context({}, [])) is None


# --- the mesh's implementations ----------------------------------------------


def mesh_node(node_id: str, namespace: str, service_account: str) -> Node:
    metadata = struct_pb2.Struct()
    proxy = Proxy(node_id=node_id, namespace=namespace, service_account=service_account)
    metadata.update(metadata_of(proxy))
    return Node(id=node_id, metadata=metadata)


def guard() -> MeshNodeGuard:
    pod = Workload(namespace="shop", name="web-1", service_account="web")
    return MeshNodeGuard("cluster.local", lambda: MeshSnapshot(workloads={("shop", "web-1"): pod}))


WEB = PeerIdentity("spiffe://cluster.local/ns/shop/sa/web", "x509")


def test_a_node_may_be_claimed_only_by_the_identity_its_pod_runs_as() -> None:
    nodes = guard()
    assert nodes.authorize_node(WEB, mesh_node("web-1.shop", "shop", "other")) is None
    denial = nodes.authorize_node(
        PeerIdentity("spiffe://cluster.local/ns/shop/sa/db", "x509"),
        mesh_node("web-1.shop", "shop", "db"),  # the metadata lies; the Pod wins
    )
    assert denial == (
        "spiffe://cluster.local/ns/shop/sa/db may not claim node web-1.shop, "
        "whose workload runs as spiffe://cluster.local/ns/shop/sa/web"
    )
    # no Pod: the node's own namespace and service account
    assert nodes.authorize_node(WEB, mesh_node("gw", "shop", "web")) is None
    assert nodes.authorize_node(WEB, mesh_node("gw", "shop", "db")) is not None


def test_only_the_shared_secret_names_may_be_asked_for() -> None:
    nodes = guard()
    node = mesh_node("web-1.shop", "shop", "web")
    assert nodes.authorize_names(WEB, node, SECRET, ["default", "ROOTCA"]) is None
    assert nodes.authorize_names(WEB, node, "type.googleapis.com/x.Cluster", ["any"]) is None
    denial = nodes.authorize_names(WEB, node, SECRET, ["default", "db-key"])
    assert denial is not None and "['db-key']" in denial


async def test_the_client_certificates_spiffe_id_is_the_principal() -> None:
    ca = CertificateAuthority.generate_root("cluster.local")
    key = ec.generate_private_key(ec.SECP256R1())
    svid = ca.issue_svid("shop", "web", key.public_key())
    pem = svid.certificate.public_bytes(serialization.Encoding.PEM)
    authn = ClientCertificateAuthenticator("cluster.local")
    identity = await authn.authenticate(Context({"x509_pem_cert": [pem]}, []))
    assert identity == PeerIdentity("spiffe://cluster.local/ns/shop/sa/web", "x509")
    with pytest.raises(AuthenticationError, match="no client certificate"):
        await authn.authenticate(Context({}, []))
    with pytest.raises(AuthenticationError, match=r"under spiffe://other\.domain/"):
        await ClientCertificateAuthenticator("other.domain").authenticate(
            Context({"x509_pem_cert": [pem]}, [])
        )


def test_the_xds_server_presents_an_svid_of_its_own_identity() -> None:
    ca = CertificateAuthority.generate_root("cluster.local")
    tls = issue_server_tls(ca, "xds-system", b"roots")
    leaf = x509.load_pem_x509_certificate(tls.chain_pem)
    assert tls.spiffe_id == "spiffe://cluster.local/ns/xds-system/sa/xds-server"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [tls.spiffe_id]
    key = serialization.load_pem_private_key(tls.key_pem, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    assert tls.credentials(require_client_auth=True) is not None
